"""A small kustomize in Python: exactly the subset deploy/kubernetes/ uses, so the manifests can
be rendered and checked on a machine without kubectl (Debian's kubernetes-client is too old for
kustomize v5, and neither is on PyPI).

Supported: `resources` (files and directories), `namespace`, `images`, `configMapGenerator`
and `secretGenerator` (`literals`, `files`, `envs`, `behavior: create|merge`), `patches` with a
`path` to strategic-merge patches, the name-hash suffix of generated objects (kustomize's
algorithm) and the rewriting of references to them in pod specs. Anything else in a
kustomization is an error, so the subset cannot silently drift from what the manifests use.
Where kubectl is installed, test_kubernetes.py checks this renderer against `kubectl kustomize`.
"""
import base64
import copy
import hashlib
import json
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "configMapGenerator", "secretGenerator", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
                  "StorageClass", "PriorityClass", "IngressClass"}
# Strategic-merge keys of the lists the manifests patch (from the Kubernetes API's patchMergeKey).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}


class KustomizeError(Exception):
    pass


def render(directory):
    """Every object the kustomization in `directory` produces, as dicts."""
    objects, generated = _build(Path(directory))
    _hash_names(objects, generated)
    return objects


def load_yaml_documents(path):
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


def _build(directory):
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{directory}/kustomization.yaml: not supported by kustomize_lite: {sorted(unknown)}")
    objects, generated = [], set()
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            sub, sub_generated = _build(path)
            objects += sub
            generated |= sub_generated
        else:
            objects += load_yaml_documents(path)
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for spec in k.get(key, []):
            made = _generate(directory, kind, spec)
            behavior = spec.get("behavior", "create")
            existing = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == spec["name"]]
            if behavior == "create":
                if existing:
                    raise KustomizeError(f"{kind} {spec['name']} generated twice")
                objects.append(made)
                generated.add((kind, spec["name"]))
            elif behavior == "merge":
                if len(existing) != 1 or (kind, spec["name"]) not in generated:
                    raise KustomizeError(f"merge: no generated {kind} {spec['name']} in the resources")
                existing[0].setdefault("data", {}).update(made.get("data", {}))
            else:
                raise KustomizeError(f"generator behavior {behavior!r} not supported")
    for patch in k.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"only patches with a path are supported: {patch}")
        for doc in load_yaml_documents(directory / patch["path"]):
            targets = [o for o in objects if o["kind"] == doc["kind"] and o["metadata"]["name"] == doc["metadata"]["name"]
                       and o["apiVersion"] == doc["apiVersion"]]
            if len(targets) != 1:
                raise KustomizeError(f"patch {patch['path']}: {doc['kind']} {doc['metadata']['name']} matches {len(targets)} objects")
            merged = strategic_merge(targets[0], doc)
            targets[0].clear()
            targets[0].update(merged)
    if "namespace" in k:
        for o in objects:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = k["namespace"]
    for image in k.get("images", []):
        for o in objects:
            for container in _containers(o):
                name, tag = _split_image(container["image"])
                if name == image["name"]:
                    container["image"] = image.get("newName", name) + (f":{image['newTag']}" if "newTag" in image else (f":{tag}" if tag else ""))
    return objects, generated


def _generate(directory, kind, spec):
    unknown = set(spec) - {"name", "literals", "files", "envs", "behavior"}
    if unknown:
        raise KustomizeError(f"generator {spec['name']}: not supported: {sorted(unknown)}")
    data = {}
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    for env_file in spec.get("envs", []):
        for line in (directory / env_file).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                data[key.strip()] = value
    for entry in spec.get("files", []):
        key, _, path = entry.rpartition("=")
        data[key or Path(path).name] = (directory / path).read_text()
    out = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        out["type"] = "Opaque"
        out["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        out["data"] = data
    return out


def strategic_merge(target, patch):
    """The strategic merge of `patch` into `target` for maps and the keyed lists in MERGE_KEYS."""
    if not isinstance(target, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            raise KustomizeError(f"patch directive {key} not supported")
        if key in MERGE_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
            # Items new to the list go first, in the patch's order (as kustomize orders them);
            # items with a key already there are merged in place.
            merge_key = MERGE_KEYS[key]
            merged, added = out[key], []
            for item in value:
                same = [i for i, existing in enumerate(merged) if existing.get(merge_key) == item.get(merge_key)]
                if same:
                    merged[same[0]] = strategic_merge(merged[same[0]], item)
                else:
                    added.append(copy.deepcopy(item))
            out[key] = added + merged
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = strategic_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def pod_spec(o):
    """The pod spec inside a workload, or None."""
    spec = o.get("spec", {})
    if o["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    if "template" in spec and "spec" in spec["template"]:
        return spec["template"]["spec"]
    return None


def _containers(o):
    spec = pod_spec(o)
    if not spec:
        return []
    return spec.get("containers", []) + spec.get("initContainers", [])


def _split_image(image):
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return image, ""
    return name, tag


def _go_json(value):
    """encoding/json's Marshal of a map: sorted keys, no spaces, UTF-8, <>& escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def name_hash(o):
    """kustomize's suffix for a generated ConfigMap or Secret (api/hasher, kustomize v5).

    kustomize v5 looks the name up as the single field "metadata/name", finds nothing and hashes
    an empty name: the suffix depends on the kind, type and data only. Replicated, since the
    point is to produce what kubectl produces."""
    if o["kind"] == "ConfigMap":
        encoded = {"kind": "ConfigMap", "name": "", "data": o.get("data") or ""}
    else:
        encoded = {"kind": "Secret", "type": o.get("type", ""), "name": "", "data": o.get("data") or ""}
    digest = hashlib.sha256(_go_json(encoded).encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _hash_names(objects, generated):
    renamed = {}
    for o in objects:
        key = (o["kind"], o["metadata"]["name"])
        if key in generated:
            new = f"{key[1]}-{name_hash(o)}"
            renamed[key] = new
            o["metadata"]["name"] = new
    for o in objects:
        spec = pod_spec(o)
        if not spec:
            continue

        def fix(ref, field, kind):
            if ref and (kind, ref.get(field)) in renamed:
                ref[field] = renamed[(kind, ref[field])]

        for volume in spec.get("volumes", []):
            fix(volume.get("configMap"), "name", "ConfigMap")
            fix(volume.get("secret"), "secretName", "Secret")
            for source in volume.get("projected", {}).get("sources", []):
                fix(source.get("configMap"), "name", "ConfigMap")
                fix(source.get("secret"), "name", "Secret")
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for env in container.get("env", []):
                fix(env.get("valueFrom", {}).get("configMapKeyRef"), "name", "ConfigMap")
                fix(env.get("valueFrom", {}).get("secretKeyRef"), "name", "Secret")
            for source in container.get("envFrom", []):
                fix(source.get("configMapRef"), "name", "ConfigMap")
                fix(source.get("secretRef"), "name", "Secret")
