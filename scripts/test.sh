#!/usr/bin/env bash
# The project's one test command (README "Run the tests"; .ci/run calls it).
# Installs what the tests need when missing (Debian: nginx, chromium; npm packages), builds the
# release profile (candle is ~85x slower unoptimised) and runs every suite, bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# The black-box tests and attack.py drive the server through FLAMINGO_TEST_* variables, which
# only a binary built with the `test-hooks` feature honours (one built without refuses to start
# when they are set). target/release/flamingo-server is that build from here on.
HOOKS=(--features flamingo-server/test-hooks)

echo "== build (with the test hooks)"
cargo build --release --workspace --bins "${HOOKS[@]}"

echo "== format and lints (cargo fmt --check; clippy -D warnings on every target, with and without the test hooks)"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release "${HOOKS[@]}" -- -D warnings
cargo clippy --workspace --all-targets --release -- -D warnings

echo "== cargo tests"
cargo test --release --workspace "${HOOKS[@]}"
# The server's unit tests as the production build compiles them (hooks refused). --lib builds no
# binary, so target/release/flamingo-server keeps the hooks for the suites below.
cargo test --release -p flamingo-server --lib

if [ -f scripts/attack.py ]; then
  echo "== attack script (hostile requests against the release binary, short form)"
  python3 scripts/attack.py --short
fi

if [ -x tests/clients/run.sh ]; then
  echo "== client libraries (openai, huggingface_hub, curl, README examples)"
  tests/clients/run.sh
fi

if [ -x tests/browser/run.sh ]; then
  echo "== browser test (headless chromium)"
  tests/browser/run.sh
fi

if [ -x scripts/proxy-run.sh ]; then
  echo "== proxy run (nginx + load tool, short form)"
  SHORT=1 scripts/proxy-run.sh
fi

if [ -x scripts/multi-replica-run.sh ]; then
  echo "== multi-replica run (3 replicas behind nginx consistent hashing, failover, scaling rule; short form)"
  SHORT=1 scripts/multi-replica-run.sh
fi

if [ -x scripts/k8s-check.sh ]; then
  echo "== Kubernetes chart check (helm lint/template, kubernetes-validate --strict)"
  scripts/k8s-check.sh
fi
echo "== all tests passed"
