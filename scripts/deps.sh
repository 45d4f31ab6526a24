#!/usr/bin/env bash
# Installs the Debian packages funnel needs when they are missing, and
# checks that Node.js is new enough.
#   scripts/deps.sh         what the tests need: redis-server, redis-tools,
#                           Node.js >= 20 with npm, chromium (browser tests)
#   scripts/deps.sh --run   what make run, make bench-redis and make gen
#                           need: redis-server and redis-tools
set -euo pipefail
want_node_major=20
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
if [ "${1:-}" != "--run" ]; then
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "funnel: missing ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "installing ${missing[*]} from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ "${1:-}" = "--run" ] && exit 0

# The pinned ioredis 6 and BullMQ (compat/node, deploy/compose/demo) need
# Node.js 20 or newer. Debian 12's nodejs package is 18.
major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$major" -lt "$want_node_major" ]; then
  cat >&2 <<MSG
funnel: Node.js $(node --version 2>/dev/null || echo '(none)') is too old: the tests' clients (ioredis 6, BullMQ 6) need Node.js ${want_node_major} or newer.
  Debian 12 (bookworm) ships Node.js 18. Get Node.js ${want_node_major}+ from one of:
  - Debian 13 (trixie) or newer, whose nodejs package is 20: apt-get install nodejs npm
  - NodeSource's Debian packages for Node.js ${want_node_major}.x (add their apt repository, then apt-get install nodejs)
  - nvm or the official binary tarball for Node.js ${want_node_major}, installed for your user
  Then run make test again.
MSG
  exit 1
fi
