#!/usr/bin/env bash
# Install Debian's QGIS (3.22 on Debian 12) for the QGIS tests, when it is missing. Needs root (apt-get).
# PyQGIS runs under Debian's /usr/bin/python3, not the project venv.
set -euo pipefail
if /usr/bin/python3 -c "import qgis.core" >/dev/null 2>&1 && [ -x /usr/bin/qgis_process.bin ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
  echo "setup_qgis: QGIS is missing and apt-get needs root; the qgis tests will be skipped" >&2
  exit 0
fi
SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
echo "setup_qgis: installing qgis python3-qgis python3-gdal from Debian (about a minute)" >&2
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qgis python3-qgis python3-gdal >/dev/null
