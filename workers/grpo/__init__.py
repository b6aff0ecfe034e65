"""GRPO-family building blocks for `rl` jobs: advantages, the policy loss, verifiable rewards, rollouts."""
