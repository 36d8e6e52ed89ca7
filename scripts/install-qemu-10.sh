#!/bin/sh
# Puts QEMU 10.0 from Debian's bookworm-backports under /opt/qemu-10, beside the system's QEMU
# (Debian 12's 7.2), without installing it: the system's apt sources, package state and QEMU stay
# as they are. What torpor runs is chosen by TORPOR_QEMU:
#   TORPOR_QEMU=/opt/qemu-10/bin/qemu-system-x86_64 torpor run --rm base uname -a
# Measured against 7.2 in bench/results/qemu-versions-2026-11-29-tcg.txt: not faster for torpor
# under TCG, so torpor does not use it by default. Snapshots do not cross releases either way
# (torpor refuses them with `snapshot-qemu`). Run as root on Debian 12 (amd64).
set -eu
prefix=${QEMU10_PREFIX:-/opt/qemu-10}

mkdir -p "$prefix/apt/lists/partial" "$prefix/apt/cache/archives/partial" "$prefix/root" "$prefix/bin"
# A private apt configuration: its own source list, package lists and download cache.
cat > "$prefix/apt/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
EOF
set -- -o Dir::Etc::SourceList="$prefix/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent \
  -o Dir::State::Lists="$prefix/apt/lists" -o Dir::Cache="$prefix/apt/cache" -o Dir::State::status=/var/lib/dpkg/status \
  -o APT::Sandbox::User=root
apt-get "$@" update
cd "$prefix/apt/cache"
rm -f ./*.deb
# Whatever bookworm-backports has now (10.0.2+ds-2+deb13u1~bpo12+1 when this was written); its
# QEMU needs a newer SeaBIOS than Debian 12's, also from there.
apt-get "$@" download qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports qemu-system-data/bookworm-backports seabios/bookworm-backports
for package in ./*.deb; do dpkg-deb -x "$package" "$prefix/root"; done

# Its shared libraries are all Debian 12's own; say so now rather than at the first start.
if ldd "$prefix/root/usr/bin/qemu-system-x86_64" | grep -q 'not found'; then
  ldd "$prefix/root/usr/bin/qemu-system-x86_64" | grep 'not found' >&2
  echo "install-qemu-10: libraries missing (apt-get install them, then run this again)" >&2
  exit 1
fi

# The wrapper torpor runs: 10.0's firmware (-L) and modules, not the system's 7.2 ones (a 7.2 module
# refuses to load into 10.0). exec keeps one process, so torpor's preloaded pager (which checks that
# the executable is named qemu-system-*) and parent-death signal apply to QEMU itself.
cat > "$prefix/bin/qemu-system-x86_64" <<EOF
#!/bin/sh
QEMU_MODULE_DIR=$prefix/root/usr/lib/x86_64-linux-gnu/qemu
export QEMU_MODULE_DIR
exec $prefix/root/usr/bin/qemu-system-x86_64 -L $prefix/root/usr/share/qemu -L $prefix/root/usr/share/seabios "\$@"
EOF
chmod 755 "$prefix/bin/qemu-system-x86_64"
"$prefix/bin/qemu-system-x86_64" --version | head -1
echo "install-qemu-10: use it with TORPOR_QEMU=$prefix/bin/qemu-system-x86_64"
