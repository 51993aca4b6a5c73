# Config access and enumerations; the logic lives in workflow_scripts.dag (unit-tested).
import re

from workflow_scripts import dag

dag.check_config(config)
dag.check_dataset(config)  # here, not only in input functions, whose errors Snakemake can drop

PAIRS = list(config["pairs"])
MODELS = list(config["models"])


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    pair="|".join(map(re.escape, PAIRS)),
    release=r"[A-Za-z0-9][A-Za-z0-9._-]*",  # a released folder name (the schema's id pattern)
    shard=r"\d+",
    layer=r"\d+",
    seed=r"\d+",


def model_setting(model, key, default=None):
    return dag.model_config(config, model).get(key, default)


def groups_arg():
    """Sorted, so that reordering the config's keys changes no param (and reruns nothing)."""
    return ",".join(f"{prefix}={group}" for prefix, group in sorted(config["dataset"]["groups"].items()))
