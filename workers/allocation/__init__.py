"""Mixed-precision bit allocation: the level database and the search methods that pick a level per layer."""
