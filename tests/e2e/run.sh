#!/usr/bin/env bash
# plugsync end to end, on a kind cluster with a local registry. See tests/e2e/README.md.
#
#   PLUGSYNC_E2E=1 cargo test --test e2e -- --nocapture      (or: bash tests/e2e/run.sh)
#
# 1. A registry container (kind-registry, 127.0.0.1:5001 on the host) and a kind cluster
#    (kind-config.yaml) whose containerd pulls from it over plain HTTP.
# 2. The plugsync image built from the Dockerfile, pushed to the registry, installed from
#    deploy/ (kustomize overlay: that image, this run's git URL, a short interval).
# 3. A git server (git daemon in a container on the kind network) holding a plugins.yaml and a
#    plugins.lock made by the locally built `plugsync lock`, with the in-repo example plugin
#    examples/plugins/hello-world.
# 4. Checks: the Plugin becomes Running and answers /health through svc-<plugin-id>; a version
#    bump brings a new plugin-id to Running and prunes the old Plugin; a plugin whose build
#    fails (a requirement that does not exist) fails, and its retry <plugin-id>--2 appears and
#    stalls at maxAttempts; removing every plugin prunes them all.
# Everything is removed at exit (also on failure, after printing diagnostics) unless KEEP=1.
#
# Needs docker, kind, kubectl, git and cargo, and network access (base images, PyPI).
# Settings (environment):
#   KEEP=1                               keep the cluster, registry, git server and work dir
#   PLUGSYNC_E2E_CLUSTER                 kind cluster name [plugsync-e2e]
#   PLUGSYNC_E2E_NODE_IMAGE              kind node image [kind's default]
#   PLUGSYNC_E2E_REGISTRY_NAME / _PORT   registry container and host port [kind-registry, 5001]
#   PLUGSYNC_E2E_PYTHON_BASE_IMAGE       base image of plugin builds [python:3.12-slim-bookworm]
#   PLUGSYNC_E2E_BUILD_TIMEOUT           seconds to wait for one build + rollout [1500]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${PLUGSYNC_E2E_CLUSTER:-plugsync-e2e}"
NODE_IMAGE="${PLUGSYNC_E2E_NODE_IMAGE:-}"
REG_NAME="${PLUGSYNC_E2E_REGISTRY_NAME:-kind-registry}"
REG_PORT="${PLUGSYNC_E2E_REGISTRY_PORT:-5001}"
REG_IMAGE="${PLUGSYNC_E2E_REGISTRY_IMAGE:-registry:2}"
GIT_NAME="${CLUSTER}-git"
GIT_IMAGE="${PLUGSYNC_E2E_GIT_IMAGE:-alpine:3.20}"
BUSYBOX_IMAGE="${PLUGSYNC_E2E_BUSYBOX_IMAGE:-busybox:1.36}"
PYTHON_BASE_IMAGE="${PLUGSYNC_E2E_PYTHON_BASE_IMAGE:-python:3.12-slim-bookworm}"
BUILD_TIMEOUT="${PLUGSYNC_E2E_BUILD_TIMEOUT:-1500}"
NS=plugsync-system
SET=e2e
RUN_ID="$(date +%s)"
PLUGSYNC_IMAGE="localhost:${REG_PORT}/plugsync:e2e-${RUN_ID}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/plugsync-e2e.XXXXXX")"
REPO="$WORK/repo"
export KUBECONFIG="$WORK/kubeconfig"
export PLUGSYNC_CACHE_DIR="$WORK/cache"
CREATED_CLUSTER=0
CREATED_REGISTRY=0

log() { printf '\n[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() {
    printf '[e2e] FAIL: %s\n' "$*" >&2
    exit 1
}

# Diagnostics for a failed run: what plugsync and the cluster say.
dump() {
    log "diagnostics"
    kubectl -n "$NS" get pluginsets,plugins,jobs,deployments,services,pods -o wide || true
    kubectl -n "$NS" get pluginset "$SET" -o yaml || true
    kubectl -n "$NS" describe plugins || true
    kubectl -n "$NS" get events --sort-by=.lastTimestamp || true
    kubectl -n "$NS" logs -l app.kubernetes.io/name=plugsync --all-containers --prefix --tail=300 || true
    local job
    for job in $(kubectl -n "$NS" get jobs -o name 2>/dev/null); do
        kubectl -n "$NS" logs "$job" --all-containers --prefix --tail=40 || true
    done
    docker logs --tail 40 "$GIT_NAME" || true
}

cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    if ((status != 0)); then
        log "FAILED (exit status $status)"
        dump
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then
        log "KEEP=1: keeping cluster $CLUSTER (KUBECONFIG=$KUBECONFIG), registry $REG_NAME, git server $GIT_NAME, work dir $WORK"
        exit "$status"
    fi
    log "cleaning up"
    docker rm -f "$GIT_NAME" >/dev/null 2>&1
    if ((CREATED_CLUSTER)); then
        kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
    fi
    if ((CREATED_REGISTRY)); then
        docker rm -f "$REG_NAME" >/dev/null 2>&1
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_until SECONDS WHAT COMMAND...: run COMMAND every 2 seconds until it succeeds.
wait_until() {
    local seconds=$1 what=$2
    local deadline=$((SECONDS + seconds))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${seconds}s waiting for $what"
        sleep 2
    done
}

# has_output COMMAND...: COMMAND succeeds and prints something.
has_output() {
    local out
    out="$("$@" 2>/dev/null)" || return 1
    [[ -n "$out" ]]
}

# plugsync ARGS...: the locally built binary (the one under test, same sources as the image).
plugsync() {
    cargo run --quiet --locked --manifest-path "$ROOT/Cargo.toml" --bin plugsync -- "$@"
}

# plugin_id NAME: the plugin id of author/name in the repository's plugins.lock.
plugin_id() {
    local id
    id="$(awk -v name="$1" '
        $1 == "-" && $2 == "name:" { current = $3 }
        $1 == "plugin_id:" && current == name { print $2 }
    ' "$REPO/plugins.lock")"
    [[ "$id" =~ ^[0-9a-f]{32}$ ]] || fail "no plugin id for $1 in plugins.lock"
    printf '%s\n' "$id"
}

# write_plugins_yaml PATH...: plugins.yaml declaring the plugin directories PATH...
write_plugins_yaml() {
    {
        cat <<EOF
# plugsync end-to-end test ($RUN_ID)
apiVersion: plugsync.dev/v1alpha1
kind: PluginSet
metadata:
  name: $SET
  namespace: $NS
spec:
  registry:
    # Build Jobs push here from inside pods: the registry's address on the kind network
    # (plain HTTP; the nodes' containerd pulls from it through certs.d/$REG_IP:5000).
    prefix: $REG_IP:5000/dify-plugins
    type: docker
    secretName: image-repo-secret
    insecure: true
  build:
    maxAttempts: 2
    timeout: 20m
    backoff:
      base: 5s
      cap: 30s
    python:
      preCompile: true
      baseImages:
        "3.12": $PYTHON_BASE_IMAGE
  runtime:
    replicas: 1
EOF
        if (($# == 0)); then
            echo "  plugins: []"
        else
            echo "  plugins:"
            local path
            for path in "$@"; do
                echo "    - path: $path"
            done
        fi
    } >"$REPO/plugins.yaml"
}

# commit_and_push MESSAGE: lock, commit everything, push to the git server; sets COMMIT.
# (Not used as $(...): bash runs command substitutions without errexit.)
commit_and_push() {
    plugsync lock --repo "$REPO"
    plugsync lock --repo "$REPO" --locked
    git -C "$REPO" add -A
    git -C "$REPO" commit -q -m "$1"
    git -C "$REPO" push -q "$GIT_PUSH_URL" HEAD:main
    COMMIT="$(git -C "$REPO" rev-parse HEAD)"
}

# request_reconcile: ask plugsync to sync now rather than at the next interval.
request_reconcile() {
    kubectl -n "$NS" annotate --overwrite pluginset "$SET" \
        "plugsync.dev/reconcile-requested-at=$(date -u +%Y-%m-%dT%H:%M:%SZ)" >/dev/null 2>&1 || true
}

applied_commit_is() {
    local applied
    applied="$(kubectl -n "$NS" get pluginset "$SET" -o jsonpath='{.status.lastAppliedCommit}')"
    [[ -n "$applied" && "$1" == "$applied"* ]]
}

# wait_applied COMMIT: the PluginSet records COMMIT as applied.
wait_applied() {
    request_reconcile
    wait_until 300 "PluginSet $SET to apply commit $1" applied_commit_is "$1"
}

# wait_phase ID PHASE SECONDS: Plugin ID exists and reaches PHASE.
wait_phase() {
    wait_until 300 "Plugin $1 to be created" kubectl -n "$NS" get plugin "$1"
    kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'="$2" "plugin/$1" --timeout="${3}s" >/dev/null ||
        fail "Plugin $1 did not reach phase $2"
}

# http_get URL: GET URL from a pod in the cluster; prints the body.
http_get() {
    kubectl -n "$NS" run "e2e-http-$RANDOM$RANDOM" --rm -i --quiet --restart=Never \
        --image="$BUSYBOX_IMAGE" --command -- wget -q -T 10 -O - "$1"
}

health_ok() {
    local body
    body="$(http_get "http://svc-$1.$NS.svc:8080/health")" || return 1
    [[ "$body" == *OK* || "$body" == *ok* ]]
}

leader_count() {
    kubectl -n "$NS" get pods -l app.kubernetes.io/name=plugsync,plugsync.dev/leader=true -o name | grep -c .
}

one_leader() { [[ "$(leader_count)" == 1 ]]; }

gone() {
    ! kubectl -n "$NS" get "$1" >/dev/null 2>&1
}

wait_gone() {
    local object
    for object in "$@"; do
        wait_until 300 "$object to be pruned" gone "$object"
    done
}

# --- prerequisites --------------------------------------------------------------------------
for tool in docker kind kubectl git cargo awk; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is required (see tests/e2e/README.md)"
done
docker info >/dev/null 2>&1 || fail "cannot reach the Docker daemon (docker info)"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    fail "a kind cluster named $CLUSTER exists already; delete it (kind delete cluster --name $CLUSTER) or set PLUGSYNC_E2E_CLUSTER"
fi
if docker inspect "$GIT_NAME" >/dev/null 2>&1; then
    fail "a container named $GIT_NAME exists already (docker rm -f $GIT_NAME)"
fi

# --- 1. registry and cluster ----------------------------------------------------------------
log "registry $REG_NAME on 127.0.0.1:$REG_PORT"
if [[ "$(docker inspect -f '{{.State.Running}}' "$REG_NAME" 2>/dev/null || true)" != true ]]; then
    if docker inspect "$REG_NAME" >/dev/null 2>&1; then
        fail "container $REG_NAME exists but is not running (docker start $REG_NAME, or docker rm $REG_NAME)"
    fi
    docker run -d --restart=always -p "127.0.0.1:${REG_PORT}:5000" --network bridge \
        --name "$REG_NAME" "$REG_IMAGE" >/dev/null
    CREATED_REGISTRY=1
fi

log "kind cluster $CLUSTER"
node_image_args=()
if [[ -n "$NODE_IMAGE" ]]; then
    node_image_args=(--image "$NODE_IMAGE")
fi
CREATED_CLUSTER=1
kind create cluster --name "$CLUSTER" --config "$ROOT/kind-config.yaml" \
    --kubeconfig "$KUBECONFIG" --wait 180s ${node_image_args[@]+"${node_image_args[@]}"}

# The registry joins the cluster's network (kind's guide, step 4).
if [[ "$(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$REG_NAME")" == null ]]; then
    docker network connect kind "$REG_NAME"
fi
REG_IP="$(docker inspect -f '{{(index .NetworkSettings.Networks "kind").IPAddress}}' "$REG_NAME")"
[[ -n "$REG_IP" ]] || fail "no address for $REG_NAME on the kind network"

# containerd on every node (kind's guide, step 3): localhost:$REG_PORT is the registry
# container, and the registry's kind-network address, where build Jobs push, is plain HTTP.
for node in $(kind get nodes --name "$CLUSTER"); do
    docker exec "$node" mkdir -p "/etc/containerd/certs.d/localhost:${REG_PORT}" \
        "/etc/containerd/certs.d/${REG_IP}:5000"
    docker exec -i "$node" cp /dev/stdin "/etc/containerd/certs.d/localhost:${REG_PORT}/hosts.toml" <<EOF
[host."http://${REG_NAME}:5000"]
EOF
    docker exec -i "$node" cp /dev/stdin "/etc/containerd/certs.d/${REG_IP}:5000/hosts.toml" <<EOF
server = "http://${REG_IP}:5000"

[host."http://${REG_IP}:5000"]
  capabilities = ["pull", "resolve"]
EOF
done

# Document the local registry (kind's guide, step 5; KEP-1755).
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "localhost:${REG_PORT}"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
EOF

# --- 2. the plugsync image ------------------------------------------------------------------
log "building $PLUGSYNC_IMAGE"
docker build -t "$PLUGSYNC_IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
docker push -q "$PLUGSYNC_IMAGE" >/dev/null
log "building the local plugsync (for plugsync lock)"
cargo build --quiet --locked --manifest-path "$ROOT/Cargo.toml" --bin plugsync

# --- 3. the git server and the first commit -------------------------------------------------
log "git server $GIT_NAME"
docker run -d --name "$GIT_NAME" --network kind -p 127.0.0.1::9418 "$GIT_IMAGE" sh -ec '
    apk add --no-cache git-daemon >/dev/null
    git init -q --bare -b main /srv/git/plugins.git
    exec git daemon --reuseaddr --verbose --export-all --enable=receive-pack \
        --base-path=/srv/git /srv/git' >/dev/null
GIT_HOST_PORT="$(docker port "$GIT_NAME" 9418/tcp | head -n 1)"
GIT_PUSH_URL="git://127.0.0.1:${GIT_HOST_PORT##*:}/plugins.git"
GIT_IP="$(docker inspect -f '{{(index .NetworkSettings.Networks "kind").IPAddress}}' "$GIT_NAME")"
[[ -n "$GIT_IP" ]] || fail "no address for $GIT_NAME on the kind network"
GIT_URL="git://${GIT_IP}/plugins.git"
wait_until 180 "the git server at $GIT_PUSH_URL" git ls-remote "$GIT_PUSH_URL"

log "repository: hello-world 0.1.0"
mkdir -p "$REPO/plugins"
git -C "$REPO" init -q -b main
git -C "$REPO" config user.name "plugsync e2e"
git -C "$REPO" config user.email "e2e@plugsync.invalid"
cp -R "$ROOT/examples/plugins/hello-world" "$REPO/plugins/hello-world"
write_plugins_yaml plugins/hello-world
commit_and_push "hello-world 0.1.0"
COMMIT1="$COMMIT"
HELLO1="$(plugin_id plugsync/hello-world)"

# --- 4. install plugsync --------------------------------------------------------------------
log "installing plugsync from deploy/"
kubectl apply --server-side -f "$ROOT/deploy/namespace.yaml" >/dev/null
kubectl -n "$NS" create secret docker-registry image-repo-secret \
    --docker-server="${REG_IP}:5000" --docker-username=e2e --docker-password=e2e >/dev/null
mkdir -p "$WORK/overlay"
cp -R "$ROOT/deploy" "$WORK/deploy"
cat >"$WORK/overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../deploy
images:
  - name: registry.example.com/plugsync
    newName: ${PLUGSYNC_IMAGE%:*}
    newTag: ${PLUGSYNC_IMAGE##*:}
patches:
  - target:
      group: apps
      version: v1
      kind: Deployment
      name: plugsync
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/args
        value:
          - run
          - --git-url=${GIT_URL}
          - --branch=main
          - --path=.
          - --interval=10s
          - --jitter=0.1
          - --listen=0.0.0.0:8080
          - --cache-dir=/var/cache/plugsync
          - --context-base-url=http://plugsync-leader.\$(PLUGSYNC_NAMESPACE).svc:8080
          - --lease-name=plugsync
EOF
kubectl apply --server-side -k "$WORK/overlay" >/dev/null
kubectl wait --for=condition=Established --timeout=120s \
    crd/plugins.plugsync.dev crd/pluginsets.plugsync.dev >/dev/null
kubectl -n "$NS" rollout status deployment/plugsync --timeout=600s
wait_until 180 "exactly one plugsync pod labelled leader" one_leader
wait_until 120 "/metrics through the plugsync-metrics Service" \
    has_output http_get "http://plugsync-metrics.$NS.svc:8080/metrics"

# --- 5. hello-world runs --------------------------------------------------------------------
log "hello-world 0.1.0 ($HELLO1): Running"
wait_until 300 "the PluginSet $SET" kubectl -n "$NS" get pluginset "$SET"
wait_applied "$COMMIT1"
wait_phase "$HELLO1" Running "$BUILD_TIMEOUT"
wait_until 120 "/health of svc-$HELLO1" health_ok "$HELLO1"
[[ "$(kubectl -n "$NS" get plugin "$HELLO1" -o jsonpath='{.status.endpoint}')" == "http://svc-$HELLO1.$NS:8080" ]] ||
    fail "Plugin $HELLO1 does not report its endpoint"

# --- 6. upgrade: a new version is a new plugin id; the old one goes once the new one runs ----
log "upgrade hello-world to 0.1.1"
sed -i.bak 's/^version: 0\.1\.0$/version: 0.1.1/' "$REPO/plugins/hello-world/manifest.yaml"
rm -f "$REPO/plugins/hello-world/manifest.yaml.bak"
grep -q '^version: 0.1.1$' "$REPO/plugins/hello-world/manifest.yaml" || fail "version bump"
commit_and_push "hello-world 0.1.1"
COMMIT2="$COMMIT"
HELLO2="$(plugin_id plugsync/hello-world)"
[[ "$HELLO2" != "$HELLO1" ]] || fail "the upgrade kept plugin id $HELLO1"
wait_applied "$COMMIT2"
wait_phase "$HELLO2" Running "$BUILD_TIMEOUT"
wait_until 120 "/health of svc-$HELLO2" health_ok "$HELLO2"
request_reconcile
wait_gone "plugin/$HELLO1" "deployment/$HELLO1" "service/svc-$HELLO1"
kubectl -n "$NS" get plugin "$HELLO2" >/dev/null || fail "the new Plugin $HELLO2 went away"

# --- 7. a failing build: BuildFailed, then the retry <plugin-id>--2, stalled at maxAttempts ---
log "a plugin whose build fails"
cp -R "$ROOT/examples/plugins/hello-world" "$REPO/plugins/broken"
sed -i.bak 's/^name: hello-world$/name: e2e-broken/' "$REPO/plugins/broken/manifest.yaml"
rm -f "$REPO/plugins/broken/manifest.yaml.bak"
grep -q '^name: e2e-broken$' "$REPO/plugins/broken/manifest.yaml" || fail "rename of the broken plugin"
# pip cannot install this, so the image build (and the Job) fails, every attempt.
echo 'plugsync-e2e-this-package-does-not-exist==0.0.0' >"$REPO/plugins/broken/requirements.txt"
write_plugins_yaml plugins/hello-world plugins/broken
commit_and_push "a plugin that cannot build"
COMMIT3="$COMMIT"
BROKEN="$(plugin_id plugsync/e2e-broken)"
wait_applied "$COMMIT3"
wait_phase "$BROKEN" BuildFailed "$BUILD_TIMEOUT"
wait_until "$BUILD_TIMEOUT" "the retry Plugin $BROKEN--2" kubectl -n "$NS" get plugin "$BROKEN--2"
kubectl -n "$NS" wait --for=condition=Stalled "plugin/$BROKEN--2" --timeout="${BUILD_TIMEOUT}s" >/dev/null ||
    fail "the last attempt $BROKEN--2 is not Stalled"
[[ "$(kubectl -n "$NS" get plugin "$BROKEN--2" -o jsonpath='{.status.phase}')" == BuildFailed ]] ||
    fail "the last attempt $BROKEN--2 is not BuildFailed"
gone "plugin/$BROKEN--3" || fail "a third attempt exceeds maxAttempts: 2"
# The working plugin is untouched by its neighbour's failure.
health_ok "$HELLO2" || fail "svc-$HELLO2 stopped answering"

# --- 8. remove everything: pruned -----------------------------------------------------------
log "remove every plugin"
rm -rf "$REPO/plugins/hello-world" "$REPO/plugins/broken"
write_plugins_yaml
commit_and_push "no plugins"
COMMIT4="$COMMIT"
wait_applied "$COMMIT4"
wait_gone "plugin/$HELLO2" "deployment/$HELLO2" "service/svc-$HELLO2" \
    "plugin/$BROKEN" "plugin/$BROKEN--2" "job/$BROKEN" "job/$BROKEN--2"
[[ -z "$(kubectl -n "$NS" get plugins -o name)" ]] || fail "Plugins left after removing every plugin"

log "PASS"
