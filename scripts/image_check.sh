#!/usr/bin/env bash
# Build the CPU image (Dockerfile.cpu) with podman and run it for real, on a host without a Docker
# engine and without access to Docker Hub: the image's entrypoint exports the model into an empty
# /models as the image's user (uid 10001) and answers POST /classify on 127.0.0.1 with 5 labels.
#
#   sudo bash scripts/image_check.sh            # as root; installs podman + debootstrap if missing
#   sudo bash scripts/image_check.sh --cold     # first drop the cached base, image and build layers
#
# Steps (docs/deploy.md, "Check the CPU image without Docker"; timings there):
# 1. podman, debootstrap, curl: apt-get installs whatever is missing.
# 2. Base image: Debian bookworm + its python3 (3.11), the stand-in for python:3.11-slim-bookworm,
#    made with debootstrap and `podman import`ed; cached as a podman image and a tarball.
# 3. `podman build --isolation chroot --format docker -f Dockerfile.cpu --build-arg BASE_IMAGE=<base>`.
#    pip inside the build uses this host's CA bundle (TLS to the registry may be intercepted) and,
#    where this host's pip find-links hold torch's CPU wheel, that wheel (bind-mounted) with PyPI for
#    everything else; otherwise the Dockerfile's own PyTorch CPU index.
# 4. `podman run` cannot start containers here (no setrlimit), so the container's root filesystem
#    (`podman create` + `podman mount`) runs under chroot instead: the image's user, environment,
#    working directory and entrypoint, an empty host folder as the /models volume, ALEXNET_HOST=127.0.0.1
#    and a free port. Waits for /readyz, posts loadtest/corpus/chelsea.jpg to /classify, checks the
#    answer, runs the image's HEALTHCHECK command, then SIGTERM and a clean exit.
# 5. Cleanup on any exit: the service, mounts, the container and temporary folders; the base and the
#    built image stay for a quick rerun.
#
# Exits 0 when every check passed, else 1 with the reason on the last line. Logs go to
# results/image-check/ (build.log, service.log). Settings (environment): IMAGE (alexnet-serve:cpu-check),
# BASE_IMAGE_TAG (localhost/alexnet-base:bookworm-py311), CACHE_DIR (/var/cache/alexnet-serve),
# DEBIAN_MIRROR (this host's apt mirror), BUILD_TIMEOUT_S (1200), READY_TIMEOUT_S (300).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

IMAGE=${IMAGE:-alexnet-serve:cpu-check}
BASE_TAG=${BASE_IMAGE_TAG:-localhost/alexnet-base:bookworm-py311}
CACHE_DIR=${CACHE_DIR:-/var/cache/alexnet-serve}
host_debian_mirror() {  # the first .../debian URI in this host's apt sources (deb822 or one-line)
    {
        sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources
        grep -h '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | sed 's/\[[^]]*\]//' \
            | awk '{print $2}'
    } 2>/dev/null | tr ' ' '\n' | grep -m1 -E '^https?://.*/debian/?$' || true
}
MIRROR=${DEBIAN_MIRROR:-$(host_debian_mirror)}
BUILD_TIMEOUT_S=${BUILD_TIMEOUT_S:-1200}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-300}
LOGS=$REPO/results/image-check
PHOTO=$REPO/loadtest/corpus/chelsea.jpg
APP_UID=10001
# What the base must hold: Dockerfile.cpu runs `python -m venv` in it (python:3.11-slim's `python`).
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata
BASE_TAR=$CACHE_DIR/base-bookworm-$(echo "$BASE_PACKAGES" | md5sum | cut -c1-8).tar

T0=$SECONDS
log() { printf '[image_check %4ds] %s\n' $((SECONDS - T0)) "$*"; }
fail() { printf '[image_check %4ds] FAILED: %s\n' $((SECONDS - T0)) "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root (podman build, chroot and mounts need it)"
COLD=0
for arg in "$@"; do
    case $arg in
        --cold) COLD=1 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) fail "unknown argument $arg (try --help)" ;;
    esac
done
mkdir -p "$LOGS" "$CACHE_DIR"

# -- cleanup: everything this run starts or mounts, in reverse order -----------------------------
WORK=$(mktemp -d /tmp/image-check.XXXXXX)
ROOTFS="" CONTAINER="" SERVICE_PID="" MOUNTED=() PASSED=0 BUILDING=0 containers_before=""
cleanup() {
    local rc=$?
    set +e
    if [ -n "$SERVICE_PID" ] && kill -0 "$SERVICE_PID" 2>/dev/null; then
        kill -TERM -- "-$SERVICE_PID" 2>/dev/null
        for _ in $(seq 1 20); do kill -0 "$SERVICE_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$SERVICE_PID" 2>/dev/null
        wait "$SERVICE_PID" 2>/dev/null
    fi
    if [ "$BUILDING" = 1 ]; then  # the build was killed or failed: remove its working containers
        for id in $(podman ps -a --external -q --no-trunc); do
            grep -qx "$id" <<<"$containers_before" || podman rm -f "$id" >/dev/null 2>&1
        done
    fi
    local i id
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" 2>/dev/null \
            || echo "warning: could not unmount ${MOUNTED[i]}" >&2
    done
    if [ -n "$CONTAINER" ]; then
        podman umount "$CONTAINER" >/dev/null 2>&1
        podman rm -f "$CONTAINER" >/dev/null 2>&1
    fi
    rm -rf "$WORK"
    if [ -n "$ROOTFS" ] && grep -qF "$ROOTFS" /proc/mounts; then
        echo "warning: mounts under $ROOTFS remain" >&2
        rc=1
    fi
    [ "$rc" -eq 0 ] && [ "$PASSED" = 1 ] && log "PASSED: Dockerfile.cpu builds, and its image serves /classify as uid $APP_UID ($((SECONDS - T0)) s)"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- 1. tools ------------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    log "1/5 installing ${missing[*]} with apt-get (at most 600 s)"
    timeout 300 apt-get update -qq >"$LOGS/apt.log" 2>&1 || fail "apt-get update failed: see $LOGS/apt.log"
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "${missing[@]}" >>"$LOGS/apt.log" 2>&1 \
        || fail "apt-get install ${missing[*]} failed: see $LOGS/apt.log"
fi
log "1/5 tools: $(podman --version), debootstrap $(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo '?')"

if [ "$COLD" = 1 ]; then
    log "--cold: removing $IMAGE, its cached build layers, $BASE_TAG and $BASE_TAR"
    podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    if podman image exists "$BASE_TAG"; then  # the untagged images built on our base: this script's layer cache
        podman images -q --filter dangling=true --filter "since=$BASE_TAG" | xargs -r podman rmi -f >/dev/null 2>&1 || true
    fi
    podman rmi -f "$BASE_TAG" >/dev/null 2>&1 || true
    rm -f "$BASE_TAR"
fi

# -- 2. base image -------------------------------------------------------------------------------
if podman image exists "$BASE_TAG"; then
    log "2/5 base image $BASE_TAG: cached"
else
    if [ ! -s "$BASE_TAR" ]; then
        [ -n "$MIRROR" ] || fail "no Debian mirror in this host's apt sources: set DEBIAN_MIRROR"
        log "2/5 base image: debootstrap bookworm ($BASE_PACKAGES) from $MIRROR (about a minute, at most 600 s)"
        target=$WORK/debootstrap
        timeout 600 debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$target" "$MIRROR" \
            >"$LOGS/debootstrap.log" 2>&1 || fail "debootstrap failed: see $LOGS/debootstrap.log"
        # As Docker Hub's slim images: no package caches or lists; the runtime provides these two.
        rm -rf "$target"/var/cache/apt/archives/*.deb "$target"/var/lib/apt/lists/* \
               "$target"/etc/resolv.conf "$target"/etc/hostname
        tar -C "$target" --numeric-owner -cf "$BASE_TAR.tmp" . && mv "$BASE_TAR.tmp" "$BASE_TAR"
        rm -rf "$target"
    fi
    log "2/5 base image: podman import $BASE_TAR as $BASE_TAG"
    podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        "$BASE_TAR" "$BASE_TAG" >/dev/null || fail "podman import of $BASE_TAR failed"
fi
log "2/5 base image $BASE_TAG ($(podman image inspect --format '{{.Id}}' "$BASE_TAG" | cut -c1-12)) ready"

# -- 3. build ------------------------------------------------------------------------------------
# What this host's pip uses to reach the registry (CA bundle, index, find-links), replicated inside the build.
pip_setting() {  # pip_setting KEY: the value pip uses here (environment first, then config files)
    { python3 -m pip config list 2>/dev/null || true; } | python3 -c '
import sys
key, found = sys.argv[1], {}
for line in sys.stdin:
    name, _, value = line.strip().partition("=")
    scope, _, k = name.rpartition(".")
    if k == key:
        found.setdefault(scope, value.strip("\x27\""))
for scope in (":env:", "install", "global"):
    if scope in found:
        print(found[scope])
        break' "$1"
}
torch_version=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile.cpu)
ca_bundle=$(pip_setting cert)
[ -n "$ca_bundle" ] || ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca_bundle" ] || fail "no CA bundle at $ca_bundle for pip inside the build"
index_url=$(pip_setting index-url)
[ -n "$index_url" ] || index_url=$(python3 -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)' 2>/dev/null || true)
wheel_dir=""
for dir in $(pip_setting find-links) ${PIP_FIND_LINKS:-}; do
    dir=${dir#file://}
    if compgen -G "$dir/torch-${torch_version}+cpu-cp311-cp311-*linux*x86_64.whl" >/dev/null; then
        wheel_dir=$dir
        break
    fi
done
# A throwaway home mounted over /root for every RUN: pip reads ~/.config/pip/pip.conf, and nothing
# of it (nor a mount point) lands in the image, since /root exists in the base.
home=$WORK/build-home
mkdir -p "$home/.config/pip" "$home/wheels"
{
    echo "[global]"
    echo "cert = /root/ca.crt"
    [ -n "$index_url" ] && echo "index-url = $index_url"
    [ -n "$wheel_dir" ] && echo "find-links = /root/wheels"
} > "$home/.config/pip/pip.conf"
cp "$ca_bundle" "$home/ca.crt"
build_args=(--build-arg "BASE_IMAGE=$BASE_TAG")
volumes=(-v "$home:/root")
if [ -n "$wheel_dir" ]; then
    # 2.13.0+cpu outranks PyPI's 2.13.0 (a CUDA build); Dockerfile.cpu refuses a CUDA torch anyway.
    [ -n "$index_url" ] || fail "cannot tell which package index this host's pip uses; set PIP_INDEX_URL"
    build_args+=(--build-arg "TORCH_INDEX=$index_url")
    volumes+=(-v "$wheel_dir:/root/wheels:ro")
    torch_source="local wheel from $wheel_dir (pip find-links), its dependencies from $index_url"
else
    torch_source="the Dockerfile's TORCH_INDEX (PyTorch's CPU index)"
fi
containers_before=$(podman ps -a --external -q --no-trunc)
BUILDING=1  # until the build ends: a killed build leaves buildah's working containers, see cleanup
log "3/5 podman build -f Dockerfile.cpu (cold: several minutes; at most $BUILD_TIMEOUT_S s); torch $torch_version: $torch_source"
set +e
timeout --kill-after=20 "$BUILD_TIMEOUT_S" podman build --isolation chroot --format docker --layers \
    -f Dockerfile.cpu -t "$IMAGE" "${build_args[@]}" "${volumes[@]}" . 2>&1 \
    | tee "$LOGS/build.log" | grep --line-buffered -E '^(\[[0-9]/[0-9]\] )?(STEP [0-9]+/[0-9]+: (FROM|RUN|COPY)|COMMIT)' \
    | sed -u 's/^/    /'
build_rc=${PIPESTATUS[0]}
set -e
cached=$(grep -c -- '--> Using cache' "$LOGS/build.log" || true)
if [ "$build_rc" -ne 0 ]; then
    tail -n 30 "$LOGS/build.log" | sed 's/^/    | /' >&2
    [ "$build_rc" -eq 124 ] && fail "podman build ran past $BUILD_TIMEOUT_S s; log: $LOGS/build.log"
    fail "podman build -f Dockerfile.cpu failed (exit $build_rc); log: $LOGS/build.log"
fi
BUILDING=0
new_image=$(podman image inspect --format '{{.Id}}' "$IMAGE")
# Keep one build's layer cache: drop untagged images on our base that this build did not use
# (earlier builds of this tag and their build stages).
used=$(grep -oE -- '--> (Using cache )?[0-9a-f]{11,}' "$LOGS/build.log" | grep -oE '[0-9a-f]{11,}' | cut -c1-11)
for stale in $(podman images -q --no-trunc --filter dangling=true --filter "since=$BASE_TAG"); do
    grep -qx "$(echo "${stale#sha256:}" | cut -c1-11)" <<<"$used" || podman rmi "$stale" >/dev/null 2>&1 || true
done
grep -E '^onnxruntime .* torch ' "$LOGS/build.log" | tail -n 1 | sed 's/^/    /' || true
log "3/5 built $IMAGE ($(echo "$new_image" | cut -c1-12), $(podman image inspect --format '{{.Size}}' "$IMAGE" \
    | awk '{printf "%.0f MiB", $1 / 1048576}'), $cached steps from cache)"

# -- 4. run the container's filesystem under chroot as the image's user --------------------------
podman image inspect "$IMAGE" > "$WORK/inspect.json"
config() {  # config FIELD...: the image's Config.FIELD values, each list item or string NUL-terminated
    python3 - "$WORK/inspect.json" "$@" <<'EOF'
import json, sys
image = json.load(open(sys.argv[1]))[0]
for field in sys.argv[2:]:
    value = image["Config"].get(field, image.get(field))  # podman keeps Healthcheck beside Config
    if isinstance(value, dict):  # Healthcheck: its CMD exec form
        test = value.get("Test") or []
        value = test[1:] if test[:1] == ["CMD"] else []
    for item in value if isinstance(value, list) else [] if value is None else [value]:
        sys.stdout.write(item + "\0")
EOF
}
user=$(config User | tr -d '\0')
workdir=$(config WorkingDir | tr -d '\0')
[ "$user" = "$APP_UID:$APP_UID" ] || fail "the image's USER is '$user', expected $APP_UID:$APP_UID"
mapfile -t -d '' entrypoint < <(config Entrypoint Cmd)
mapfile -t -d '' healthcheck < <(config Healthcheck)
[ ${#healthcheck[@]} -gt 0 ] || fail "the image has no HEALTHCHECK CMD (was it built with --format docker?)"
mapfile -t -d '' image_env < <(config Env)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run_env=("${image_env[@]}" "ALEXNET_HOST=127.0.0.1" "ALEXNET_PORT=$port" "HOME=$workdir")

CONTAINER=image-check-$$
podman create --name "$CONTAINER" "$IMAGE" >/dev/null || fail "podman create $IMAGE failed"
ROOTFS=$(podman mount "$CONTAINER") || fail "podman mount $CONTAINER failed"
models=$WORK/models  # the /models volume, empty: the entrypoint must export the model into it
mkdir -p "$models" && chown "$APP_UID:$APP_UID" "$models"
mount -t proc proc "$ROOTFS/proc" && MOUNTED+=("$ROOTFS/proc")
mount --bind /dev "$ROOTFS/dev" && MOUNTED+=("$ROOTFS/dev")
mount --bind "$models" "$ROOTFS/models" && MOUNTED+=("$ROOTFS/models")
# shellcheck disable=SC2016  # $0 and $@ are the inner shell's
in_image() {  # in_image COMMAND...: as the image's user, in its working directory, with its environment
    exec env -i "${run_env[@]}" chroot --userspec="$APP_UID:$APP_UID" --groups="$APP_UID" "$ROOTFS" \
        /bin/sh -c 'cd "$0" && exec "$@"' "$workdir" "$@"
}
log "4/5 starting '${entrypoint[*]}' as uid $APP_UID under chroot, on 127.0.0.1:$port (export + warm-up: about a minute, at most $READY_TIMEOUT_S s)"
setsid bash -c "$(declare -p run_env ROOTFS APP_UID workdir); $(declare -f in_image); in_image \"\$@\"" \
    in_image "${entrypoint[@]}" >"$LOGS/service.log" 2>&1 &
SERVICE_PID=$!
started=$SECONDS
url=http://127.0.0.1:$port
deadline=$((SECONDS + READY_TIMEOUT_S))
next_note=$((SECONDS + 15))
until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$url/readyz")" = 200 ]; do
    kill -0 "$SERVICE_PID" 2>/dev/null || { tail -n 30 "$LOGS/service.log" >&2; fail "the entrypoint exited before it was ready; log: $LOGS/service.log"; }
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$LOGS/service.log" >&2; fail "not ready after $READY_TIMEOUT_S s; log: $LOGS/service.log"; }
    if [ $SECONDS -ge $next_note ]; then
        log "    waiting for /readyz: $(grep -E ' (INFO|WARNING|ERROR) ' "$LOGS/service.log" | tail -n 1 | cut -c1-150)"
        next_note=$((SECONDS + 15))
    fi
    sleep 1
done
log "4/5 ready after $((SECONDS - started)) s; /models now holds: $(cd "$models" && echo *)"

# The artifacts were written by the image's user into the volume.
[ -s "$models/alexnet.onnx" ] || fail "/models/alexnet.onnx was not exported"
owner=$(stat -c %u "$models/alexnet.onnx")
[ "$owner" = "$APP_UID" ] || fail "/models/alexnet.onnx belongs to uid $owner, not $APP_UID"
# exec all the way down: the process we started is the service's supervisor itself, so SIGTERM
# reaches it directly (and it stops the front ends and the engine).
grep -q "supervisor (pid $SERVICE_PID) listening" "$LOGS/service.log" \
    || fail "the server is not the process the entrypoint started as (pid $SERVICE_PID): no exec?"

code=$(curl -s -o "$WORK/classify.json" -w '%{http_code}' --max-time 30 -F "file=@$PHOTO" "$url/classify") \
    || fail "POST /classify did not answer"
[ "$code" = 200 ] || { tail -n 12 "$LOGS/service.log" >&2; fail "POST /classify answered $code: $(head -c 400 "$WORK/classify.json")"; }
python3 - "$WORK/classify.json" <<'EOF' || fail "the /classify answer is not 5 labelled predictions: $(head -c 400 "$WORK/classify.json")"
import json, sys
answer = json.load(open(sys.argv[1]))
preds = answer["results"][0]["predictions"]
assert len(preds) == 5, f"{len(preds)} predictions"
assert all(isinstance(p["label"], str) and p["label"] and 0 <= p["index"] < 1000 for p in preds)
assert all(0.0 <= p["probability"] <= 1.0 for p in preds)
print("    chelsea.jpg -> " + ", ".join(f"{p['label']} {p['probability']:.3f}" for p in preds))
print(f"    backend {answer['backend']['name']} on {answer['backend']['device']}, weights {answer['model']['weights']},"
      f" {answer['timings_ms']['total']:.1f} ms")
EOF
timeout 20 bash -c "$(declare -p run_env ROOTFS APP_UID workdir); $(declare -f in_image); in_image \"\$@\"" \
    in_image "${healthcheck[@]}" >"$WORK/healthcheck.log" 2>&1 \
    || fail "the image's HEALTHCHECK failed: $(tail -n 3 "$WORK/healthcheck.log")"
log "4/5 /classify gave 5 labels; the image's HEALTHCHECK passes"

# -- 5. stop: SIGTERM drains and exits 0 ---------------------------------------------------------
kill -TERM -- "-$SERVICE_PID"
timeout 30 tail --pid="$SERVICE_PID" -f /dev/null \
    || fail "the service did not exit within 30 s of SIGTERM; log: $LOGS/service.log"
set +e
wait "$SERVICE_PID"
service_rc=$?
set -e
SERVICE_PID=""
# The supervisor exits 0 after a SIGTERM; 143 (killed by the signal) is accepted as clean too.
case $service_rc in 0|143) ;; *) fail "the service exited $service_rc after SIGTERM; log: $LOGS/service.log" ;; esac
grep -q 'Finished server process' "$LOGS/service.log" || fail "no graceful shutdown in $LOGS/service.log"
log "5/5 stopped on SIGTERM (exit $service_rc after a graceful shutdown); cleaning up"
PASSED=1
