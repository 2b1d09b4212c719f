#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver when missing: the console's
# browser test (tests/tests/console) drives them headless over WebDriver.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi

$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
echo "installed: $(/usr/bin/chromium --version), $(/usr/bin/chromedriver --version)"
