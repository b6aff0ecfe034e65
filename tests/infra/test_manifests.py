"""The deployment files in infra/ parse, pass Ray's own config checks, and agree on image, ports, env and volumes.

Schema-level only: nothing here builds the image, starts a cluster or talks to Kubernetes.
"""
from __future__ import annotations

import copy
import fnmatch
import importlib.metadata
import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
DOCKERIGNORE = INFRA / "docker" / "Dockerfile.dockerignore"
README = INFRA / "README.md"
LAUNCHER_CONFIGS = [INFRA / "ray" / "cluster.yaml", INFRA / "ray" / "local-cluster.yaml"]

# What the platform (and Ray) read from the environment on every node.
NODE_ENV = ("BITSMITH_DB_URL", "BITSMITH_ARTIFACT_ROOT", "BITSMITH_HOME", "BITSMITH_RAY_ADDRESS", "BITSMITH_LEASE_S",
            "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")
# Equal in every deployment (the database host is not: a Service name on Kubernetes, your server elsewhere).
SAME_EVERYWHERE = tuple(k for k in NODE_ENV if k != "BITSMITH_DB_URL")
RAY_PORTS = {"gcs-server": 6379, "client": 10001, "dashboard": 8265}


# ---- loading -------------------------------------------------------------------------------------------------

def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomization() -> dict[str, Any]:
    return load_docs(K8S / "kustomization.yaml")[0]


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for name in kustomization()["resources"] for doc in load_docs(K8S / name)]


def objects_of(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == kind}


def raycluster() -> dict[str, Any]:
    (cluster,) = objects_of("RayCluster").values()
    return cluster


def ray_pod_specs() -> dict[str, dict[str, Any]]:
    """Group name ("head", or the worker group's name) -> pod spec."""
    spec = raycluster()["spec"]
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in spec["workerGroupSpecs"]})
    return pods


def ray_container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]  # KubeRay runs Ray in the first container


def significant_lines(path: Path) -> list[str]:
    """The lines of an env, ignore or gitignore file that are neither blank nor comments."""
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


def secret_keys() -> dict[str, set[str]]:
    """Secret name -> its keys: Secret objects, and the generator's env files (their committed .example)."""
    keys = {name: set(o.get("data", {})) | set(o.get("stringData", {})) for name, o in objects_of("Secret").items()}
    for gen in kustomization().get("secretGenerator", []):
        found = keys.setdefault(gen["name"], set())
        for env_file in gen.get("envs", []):
            found |= {ln.split("=", 1)[0] for ln in significant_lines(K8S / f"{env_file}.example")}
        found |= {lit.split("=", 1)[0] for lit in gen.get("literals", [])}
    return keys


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets; values from Secrets read as 'secret:NAME/KEY'."""
    configmaps = {name: o.get("data", {}) for name, o in objects_of("ConfigMap").items()}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            env.update({k: f"secret:{name}/{k}" for k in secret_keys()[name]})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            ref = var["valueFrom"].get("secretKeyRef") or var["valueFrom"]["configMapKeyRef"]
            kind = "secret" if "secretKeyRef" in var["valueFrom"] else "configmap"
            env[var["name"]] = f"{kind}:{ref['name']}/{ref['key']}"
    return env


def launcher_env(config: dict[str, Any]) -> dict[str, str]:
    """`--env K=V` of the launcher's docker run_options (shared by head and worker containers)."""
    words = shlex.split(" ".join(config["docker"]["run_options"]))
    return dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w in ("--env", "-e"))


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines()
                                           if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in joined.splitlines() if ln.strip()]


def dockerfile_args() -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in dockerfile() if i == "ARG" and "=" in a)


def dockerignored(path: str) -> bool:
    """Whether the build context leaves `path` out (Docker's rule: the last matching pattern decides; ! re-includes)."""
    ignored = False
    for pattern in significant_lines(DOCKERIGNORE):
        if fnmatch.fnmatch(path, pattern.lstrip("!")):
            ignored = not pattern.startswith("!")
    return ignored


def image_name() -> str:
    """The tag the Dockerfile's documented build command gives the image."""
    m = re.search(r"^#\s+docker build -f infra/docker/Dockerfile -t (\S+) \.$", DOCKERFILE.read_text(), re.M)
    assert m, "infra/docker/Dockerfile: no `docker build -f infra/docker/Dockerfile -t IMAGE .` line"
    return m.group(1)


def pyproject() -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


# ---- every file -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.yaml")), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_file_parses_into_mappings(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path}: empty"
    assert all(isinstance(d, dict) for d in docs), f"{path}: a document is not a mapping"


def test_k8s_objects_have_identity_and_unique_names() -> None:
    seen = set()
    for o in k8s_objects():
        assert o.get("apiVersion") and o.get("kind") and o.get("metadata", {}).get("name"), o
        assert (o["kind"], o["metadata"]["name"]) not in seen, f"two {o['kind']} named {o['metadata']['name']}"
        seen.add((o["kind"], o["metadata"]["name"]))


# ---- Ray cluster launcher ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_passes_rays_schema_and_config_checks(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_docs(path)[0]
    jsonschema.validate(config, ray_schema())
    validate_config(prepare_config(config))  # what `ray up` runs before it touches a provider


def test_rays_schema_catches_a_misspelt_field() -> None:
    config = copy.deepcopy(load_docs(LAUNCHER_CONFIGS[0])[0])
    config["docker"]["imagee"] = config["docker"].pop("image")
    with pytest.raises(jsonschema.ValidationError, match="imagee"):
        jsonschema.validate(config, ray_schema())


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_starts_ray_on_the_documented_ports(path: Path) -> None:
    config = load_docs(path)[0]
    head = " ".join(config["head_start_ray_commands"])
    for flag in ("--head", "--port=6379", "--ray-client-server-port=10001", "--dashboard-port=8265"):
        assert flag in head, f"{path.name}: head_start_ray_commands lack {flag}"
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])
    assert not config.get("setup_commands"), "the image holds everything; setup_commands would reinstall"


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_containers_get_every_setting_and_the_shared_path(path: Path) -> None:
    config = load_docs(path)[0]
    env = launcher_env(config)
    assert set(NODE_ENV) <= set(env), f"{path.name}: missing {set(NODE_ENV) - set(env)}"
    if env["RAY_AUTH_MODE"] == "token":
        assert "~/.ray/auth_token" in config["file_mounts"], "token auth without the token on the nodes"
    url = make_url(env["BITSMITH_DB_URL"])
    assert url.password is None, "a password in the config file; use ~/.pgpass"
    assert "~/.pgpass" in config["file_mounts"]
    shared = str(PurePosixPath(env["BITSMITH_ARTIFACT_ROOT"]).parent)
    assert f"--volume {shared}:{shared}" in config["docker"]["run_options"]
    assert PurePosixPath(env["BITSMITH_HOME"]).is_relative_to(shared)


def test_cloud_gpu_workers_have_gpus() -> None:
    config = load_docs(LAUNCHER_CONFIGS[0])[0]
    workers = {k: t for k, t in config["available_node_types"].items() if k != config["head_node_type"]}
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu, "no GPU worker node type"
    for node_type in gpu:
        assert "--gpus all" in node_type["docker"]["worker_run_options"]
        assert node_type["max_workers"] >= node_type.get("min_workers", 0)


# ---- the image ----------------------------------------------------------------------------------------------------

def test_one_image_everywhere_and_its_tag_is_the_package_version() -> None:
    image = image_name()
    version = pyproject()["project"]["version"]
    assert image.rsplit(":", 1)[1] == version
    labels = " ".join(a for i, a in dockerfile() if i == "LABEL")
    assert f'org.opencontainers.image.version="{version}"' in labels
    for path in LAUNCHER_CONFIGS:
        docker = load_docs(path)[0]["docker"]
        assert docker["image"] == image, path.name
        assert "head_image" not in docker and "worker_image" not in docker, path.name
    for group, pod in ray_pod_specs().items():
        assert [c["image"] for c in pod["containers"]] == [image] * len(pod["containers"]), group
    assert f"docker build -f infra/docker/Dockerfile -t {image} ." in README.read_text()


def test_dockerfile_installs_an_explicit_torch_then_the_project() -> None:
    steps = dockerfile()
    assert next(i for i, _ in steps if i != "ARG") == "FROM"
    args = dockerfile_args()
    assert args["TORCH_VERSION"] and args["TORCH_VARIANT"] in {"cpu"} | {f"cu{n}" for n in range(110, 200)}
    runs = [a for i, a in steps if i == "RUN"]
    torch_step = next(n for n, a in enumerate(runs) if "torch==${TORCH_VERSION}" in a)
    assert "--index-url \"https://download.pytorch.org/whl/${TORCH_VARIANT}\"" in runs[torch_step]
    project_step = next(n for n, a in enumerate(runs) if '"/src[postgres]"' in a)
    assert torch_step < project_step, "torch must be installed before the project resolves `torch>=2.4`"
    env = " ".join(a for i, a in steps if i == "ENV")
    assert re.search(r"\bRAY_USAGE_STATS_ENABLED=0\b", env)


def test_image_ray_matches_the_project_and_the_raycluster() -> None:
    args = dockerfile_args()
    assert args["RAY_VERSION"] == importlib.metadata.version("ray"), "clients and cluster must run one Ray"
    assert raycluster()["spec"]["rayVersion"] == args["RAY_VERSION"]
    runs = " ".join(a for i, a in dockerfile() if i == "RUN")
    assert '"ray[default]==${RAY_VERSION}"' in runs, "the dashboard (8265) and KubeRay's probes need ray[default]"


def test_image_copies_what_the_package_build_needs_and_the_context_lets_it_through() -> None:
    project = pyproject()
    needed = {"pyproject.toml", project["project"]["readme"], *project["tool"]["setuptools"]["package-dir"].values()}
    copied = set()
    for instr, args in dockerfile():
        if instr == "COPY" and "--from" not in args:
            copied |= {w for w in shlex.split(args)[:-1] if not w.startswith("--")}
    assert needed <= copied, f"not copied into the image: {needed - copied}"
    for src in copied:
        assert not dockerignored(src), f"{src} is copied but the build context leaves it out"
    for heavy in (".venv", ".git", ".pytest_cache", "bitsmith.egg-info"):
        assert dockerignored(heavy), f"{heavy} would be sent to the Docker daemon"


def test_image_user_is_the_pods_user() -> None:
    steps = dockerfile()
    user = [a for i, a in steps if i == "USER"][-1]
    assert user not in ("root", "0")
    uid = int(re.search(rf"useradd\b.*--uid (\d+)\b.*\b{user}\b", " ".join(a for i, a in steps if i == "RUN"))[1])
    for group, pod in ray_pod_specs().items():
        assert pod["securityContext"]["runAsUser"] == uid, group


# ---- Kubernetes -----------------------------------------------------------------------------------------------------

def test_raycluster_shape() -> None:
    cluster = raycluster()
    assert cluster["apiVersion"] == "ray.io/v1"
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in ray_container(head["template"]["spec"])["ports"]}
    assert ports == RAY_PORTS
    assert cluster["spec"]["workerGroupSpecs"], "no worker group"
    for group in cluster["spec"]["workerGroupSpecs"]:
        assert "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]


def test_a_worker_group_requests_gpus() -> None:
    groups = {g["groupName"]: ray_container(g["template"]["spec"])["resources"]
              for g in raycluster()["spec"]["workerGroupSpecs"]}
    gpu = {name: r for name, r in groups.items() if int(r.get("limits", {}).get("nvidia.com/gpu", 0)) >= 1}
    assert gpu, "no worker group has an nvidia.com/gpu limit"
    for name, resources in gpu.items():  # Kubernetes: extended resources need requests == limits
        assert resources["requests"].get("nvidia.com/gpu") == resources["limits"]["nvidia.com/gpu"], name


def test_every_ray_pod_gets_every_setting_and_the_same_values_as_the_launcher_configs() -> None:
    envs = {group: container_env(ray_container(pod)) for group, pod in ray_pod_specs().items()}
    for group, env in envs.items():
        missing = set(NODE_ENV) - set(env)
        assert not missing, f"{group}: missing {missing}"
        assert env["PGPASSWORD"].startswith("secret:"), f"{group}: no database password from a Secret"
        if env["RAY_AUTH_MODE"] == "token":
            assert env.get("RAY_AUTH_TOKEN", "").startswith("secret:"), f"{group}: token auth without a token"
    assert len({tuple(sorted(e.items())) for e in envs.values()}) == 1, "head and workers see different settings"
    k8s = envs["head"]
    for path in LAUNCHER_CONFIGS:
        launcher = launcher_env(load_docs(path)[0])
        for key in SAME_EVERYWHERE:
            assert k8s[key] == launcher[key], f"{key}: {k8s[key]!r} on Kubernetes, {launcher[key]!r} in {path.name}"
        k8s_url, launcher_url = make_url(k8s["BITSMITH_DB_URL"]), make_url(launcher["BITSMITH_DB_URL"])
        assert k8s_url.set(host="h") == launcher_url.set(host="h"), f"{path.name}: driver, user, port or database"


def test_database_url_points_at_the_postgres_service() -> None:
    url = make_url(container_env(ray_container(ray_pod_specs()["head"]))["BITSMITH_DB_URL"])
    assert url.drivername == "postgresql+psycopg" and url.password is None
    service = objects_of("Service")[url.host]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    (deployment,) = [d for d in objects_of("Deployment").values()
                     if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    (postgres,) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in postgres["ports"]}
    assert container_ports.get(port["targetPort"], port["targetPort"]) == 5432 == url.port
    env = container_env(postgres)
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == (url.username, url.database)
    ray_password = container_env(ray_container(ray_pod_specs()["head"]))["PGPASSWORD"]
    assert env["POSTGRES_PASSWORD"] == ray_password, "the server and its clients read different passwords"


def test_pods_mount_existing_claims_and_the_shared_one_at_the_artifact_root() -> None:
    claims = objects_of("PersistentVolumeClaim")
    pods = [d["spec"]["template"]["spec"] for d in objects_of("Deployment").values()] + list(ray_pod_specs().values())
    for pod in pods:
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
    for group, pod in ray_pod_specs().items():
        container = ray_container(pod)
        env = container_env(container)
        shared = str(PurePosixPath(env["BITSMITH_ARTIFACT_ROOT"]).parent)
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == shared]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], f"{group}: every node writes artifacts"
        assert PurePosixPath(env["BITSMITH_HOME"]).is_relative_to(shared), group


def test_kustomization_lists_every_manifest_and_every_reference_resolves() -> None:
    kust = kustomization()
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == manifests
    for gen in kust.get("secretGenerator", []):
        for env_file in gen.get("envs", []):  # secrets stay out of git; a template says what goes in
            assert (K8S / f"{env_file}.example").is_file()
            assert env_file in significant_lines(K8S / ".gitignore")
    assert kust.get("generatorOptions", {}).get("disableNameSuffixHash") is True, \
        "kustomize does not rewrite hashed Secret names inside the RayCluster custom resource"
    secrets, configmaps = secret_keys(), objects_of("ConfigMap")
    containers = [ray_container(p) for p in ray_pod_specs().values()]
    containers += [c for d in objects_of("Deployment").values() for c in d["spec"]["template"]["spec"]["containers"]]
    for container in containers:
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in configmaps
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets[ref["name"]], f"{container['name']}: {ref}"


# ---- the guide ------------------------------------------------------------------------------------------------------

def test_readme_walks_both_paths_and_names_only_files_that_exist() -> None:
    text = README.read_text()
    for command in ("ray up infra/ray/cluster.yaml", "ray attach infra/ray/cluster.yaml", "kubectl apply -k infra/k8s",
                    "bitsmith db upgrade", "bitsmith sweep run examples/sweeps/", "bitsmith sweep resume",
                    "ray://localhost:10001", "RAY_AUTH_MODE", "BITSMITH_LEASE_S"):
        assert command in text, f"infra/README.md does not mention {command!r}"
    generated = {f"infra/k8s/{f}" for g in kustomization().get("secretGenerator", []) for f in g.get("envs", [])}
    for path in set(re.findall(r"(?<![\w./~-])(?:infra|examples)/[\w./-]*\w", text)) - generated:
        assert (REPO / path).exists(), f"infra/README.md names {path}, which does not exist"
    for config in LAUNCHER_CONFIGS:
        for placeholder in set(re.findall(r"REPLACE_WITH_\w+", config.read_text())):
            assert placeholder in text, f"infra/README.md does not say what to put for {placeholder}"
