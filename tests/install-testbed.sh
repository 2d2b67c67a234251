#!/bin/sh
# Install what the ssh and Slurm tests stand up on this machine (Debian/Ubuntu, as root):
# OpenSSH server and client, iproute2 for namespace hosts, Slurm and munge, and
# Chromium with its driver for the docs site's browser test (tests/test_docs_site.py).
# Nothing is started here (the tests start and stop their own daemons); without
# root or apt, those tests are skipped with the reason.
set -eu
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-testbed: not root with apt-get; the ssh and Slurm tests will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 \
    openssh-server openssh-client iproute2 slurmctld slurmd slurm-client munge \
    chromium chromium-driver >/dev/null
