"""Helpers for the deployment checks: the compose file, the Dockerfiles and a small offline
kustomize renderer (kubectl and kustomize are not needed at test time)."""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from distillery.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
#: Kubernetes version the manifests are validated against (schemas ship with kubernetes-validate).
K8S_VERSION = "1.32"
#: Kinds without a namespace (kustomize's `namespace:` leaves them alone).
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "CustomResourceDefinition",
    "PriorityClass",
}


# ------------------------------------------------------------------------------------ settings


def settings_env_names() -> set[str]:
    """Every environment variable `Settings` reads: DISTILLERY_<FIELD>."""
    return {f"DISTILLERY_{name.upper()}" for name in Settings.model_fields}


def settings_from_env(env: dict[str, Any]) -> Settings:
    """Settings as a container with `env` would read them (validates every value)."""
    kwargs = {
        k.removeprefix("DISTILLERY_").lower(): v
        for k, v in env.items()
        if k.startswith("DISTILLERY_")
    }
    return Settings(_env_file=None, **kwargs)


# ------------------------------------------------------------------------------------ commands


def as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def option(argv: list[str], *names: str) -> str | None:
    """The value of `--name VALUE`, `--name=VALUE` or `-Q VALUE` in `argv`."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def celery_app_module(argv: list[str]) -> str | None:
    """`services.worker.app` from `celery -A services.worker.app worker ...`."""
    return option(argv, "-A", "--app")


# --------------------------------------------------------------------------------- dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


# ------------------------------------------------------------------------------- kustomize-lite


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge, enough for these manifests: maps merge, lists of named maps merge by
    name, other lists and scalars are replaced; `null` deletes a key."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = _merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = [copy.deepcopy(x) for x in base]
        index = {x["name"]: i for i, x in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = _merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """Render `directory/kustomization.yaml` the way `kustomize build` does for the features these
    manifests use: resources (files and kustomization folders), namespace (also of a binding's
    ServiceAccount subjects), images, replicas and strategic-merge patches (files or inline,
    including `$patch: delete`)."""
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise FileNotFoundError(f"{kfile}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text())
    unknown = set(k) - {
        "apiVersion",
        "kind",
        "resources",
        "namespace",
        "images",
        "replicas",
        "patches",
    }
    if unknown:
        raise ValueError(f"{kfile}: this renderer does not handle {sorted(unknown)}")
    docs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        if path.is_dir():
            docs += render_kustomization(path)
        elif path.is_file():
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
        else:
            raise FileNotFoundError(f"{kfile}: resource {res!r} does not exist")
    names = [_key(d) for d in docs]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"{kfile}: resources defined twice: {sorted(dupes)}")
    for entry in k.get("patches", []):
        text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
        patch = yaml.safe_load(text)
        target = _key(patch)
        match = [i for i, d in enumerate(docs) if _key(d) == target]
        if not match:
            raise ValueError(f"{kfile}: patch targets missing {target}")
        if patch.get("$patch") == "delete":
            del docs[match[0]]
        else:
            docs[match[0]] = _merge(docs[match[0]], patch)
    for rep in k.get("replicas", []):
        match = [
            d
            for d in docs
            if d["metadata"]["name"] == rep["name"] and "replicas" in d.get("spec", {})
        ]
        if not match:
            raise ValueError(f"{kfile}: replicas for unknown workload {rep['name']!r}")
        for d in match:
            d["spec"]["replicas"] = rep["count"]
    for img in k.get("images", []):
        for d in docs:
            for c in _containers(d):
                name, _, tag = c["image"].partition(":")
                if name == img["name"]:
                    name = img.get("newName", name)
                    tag = str(img.get("newTag", tag))
                    c["image"] = f"{name}:{tag}" if tag else name
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
            # kustomize also puts a binding's ServiceAccount subjects without one there.
            for subject in d.get("subjects", []) if d["kind"].endswith("RoleBinding") else []:
                if subject.get("kind") == "ServiceAccount" and not subject.get("namespace"):
                    subject["namespace"] = k["namespace"]
    return docs


def kubectl_kustomize(directory: Path) -> list[dict[str, Any]] | None:
    """`kubectl kustomize DIR` where kubectl is installed (a cross-check of the renderer)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# ------------------------------------------------------------------------- custom resources

SCHEMAS = Path(__file__).resolve().parent / "schemas"
#: (apiVersion, kind) -> the vendored openAPIV3Schema of its CRD (kubernetes-validate has none).
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): SCHEMAS / "keda.sh_scaledobject_v1alpha1.json"}


def _unknown_fields(doc: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Fields of `doc` its schema does not declare (what `kubectl apply --validate=strict`
    rejects and the API server would silently prune)."""
    out: list[str] = []
    if isinstance(doc, dict) and "properties" in schema:
        for key, value in doc.items():
            if key in schema["properties"]:
                out += _unknown_fields(value, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("additionalProperties") and not schema.get(
                "x-kubernetes-preserve-unknown-fields"
            ):
                out.append(f"{path}.{key}")
    elif isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            out += _unknown_fields(item, schema["items"], f"{path}[{i}]")
    return out


def validate_custom_resource(doc: dict[str, Any]) -> None:
    """Validate a custom resource against its CRD's schema, unknown fields included; raises
    `ValueError` naming the field."""
    import json

    import jsonschema

    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in CRD_SCHEMAS:
        raise ValueError(f"no vendored CRD schema for {key} (tests/deploy/schemas)")
    schema = json.loads(CRD_SCHEMAS[key].read_text())
    schema.pop("$comment", None)
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path)
    )
    if errors:
        where = ".".join(str(p) for p in errors[0].absolute_path) or "(root)"
        raise ValueError(f"{key[1]} {where}: {errors[0].message}")
    unknown = _unknown_fields(doc, schema, key[1])
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(unknown)}")
