#!/bin/sh
# Installs what torpor needs on a Debian 12 host, only what is missing, and says what it does:
# Debian packages (QEMU, the guest kernel, busybox, musl, e2fsprogs, zstd, attr for image xattrs,
# nftables for the guest network filter, and the C compiler and headers the lazy memory pager is
# built with) and the npm packages.
# The guest agent, initramfs and images are built by torpor itself on first use, with progress.
set -e
cd "$(dirname "$0")/.."
quiet=false
[ "$1" = "--quiet" ] && quiet=true
say() { echo "torpor setup: $*" >&2; }

packages="qemu-system-x86 qemu-utils linux-image-cloud-amd64 busybox-static musl-tools e2fsprogs zstd attr nftables gcc libc6-dev libzstd-dev libxxhash-dev"
# One dpkg-query for all of them: `./torpor` runs this before every command, and a query per
# package cost ~0.35 s of each call.
installed=$(dpkg-query -W -f='${Package} ${Status}\n' $packages 2>/dev/null | sed -n 's/ install ok installed$//p' || true)
missing=""
for package in $packages; do
  case " $(echo $installed) " in
    *" $package "*) ;;
    *) missing="$missing $package" ;;
  esac
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages:$missing"
    say "install them as root: apt-get install -y$missing"
    exit 1
  fi
  say "installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q $missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $missing >/dev/null; }
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error >&2
fi
$quiet || say "ready"
