#!/usr/bin/env bash
# Installs what the browser test (api/tests/browser.rs running e2e/seatmap.mjs) needs: Debian's chromium, Node.js
# and npm when they are missing (the machine's own Node.js, if any, is kept: Debian's npm package conflicts with
# NodeSource's nodejs, which bundles npm), and playwright-core as pinned by e2e/package-lock.json. Safe to run
# again. apt-get needs root (CI runs as root; otherwise sudo is used).
#
# Usage: scripts/install-browser-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)

packages=()
[ -x /usr/bin/chromium ] || packages+=(chromium)
command -v node > /dev/null || packages+=(nodejs)
command -v npm > /dev/null || packages+=(npm)
if [ "${#packages[@]}" -gt 0 ]; then
  echo "install-browser-deps: apt-get install ${packages[*]}"
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${packages[@]}" > /dev/null
fi

# playwright-core 1.65 needs Node.js 20 or later (Debian 12's own nodejs is 18).
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "install-browser-deps: playwright-core needs Node.js 20 or later, this is $(node --version)" >&2
  exit 1
fi

npm ci --prefix e2e --no-audit --no-fund --loglevel=error
echo "install-browser-deps: chromium $(dpkg-query -W -f='${Version}' chromium 2> /dev/null || echo '?')," \
  "node $(node --version), playwright-core $(node -p 'require("./e2e/node_modules/playwright-core/package.json").version')"
