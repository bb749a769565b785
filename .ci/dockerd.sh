#!/usr/bin/env bash
# A private Docker daemon for the image tests and CI, and the Debian base image they build on.
#
#   .ci/dockerd.sh start DIR [DATA_ROOT]   start dockerd (socket, pid, exec root under DIR; data
#                                          root DATA_ROOT, default DIR/data); prints DOCKER_HOST=...
#   .ci/dockerd.sh stop DIR                remove its containers, stop it (nothing else is left)
#   .ci/dockerd.sh base-image NAME TARBALL docker import a debootstrap'd Debian bookworm (minbase)
#                                          as NAME, reusing TARBALL when it exists (DOCKER_HOST set)
#
# The daemon runs with no bridge and no iptables: it creates no network interface and no firewall
# rule, so stopping it leaves nothing behind. Containers use `--network host` (or none); `docker
# build --network=none` needs no network at all. There is no systemd here: the package
# (docker.io) does not start the daemon, this script does. Debian's packages only: docker.io,
# debootstrap (.ci/run installs them).
set -o errexit -o nounset -o pipefail

_usage() {
  echo "usage: $0 start DIR [DATA_ROOT] | stop DIR | base-image NAME TARBALL" >&2
  exit 2
}

_sock() { echo "$1/docker.sock"; }

_start() {
  local dir=$1 data=${2:-$1/data}
  mkdir -p "$dir" "$data"
  echo "$data" >"$dir/data-root"  # for _stop, which unmounts what the daemon left mounted
  local sock; sock=$(_sock "$dir")
  if [ -S "$sock" ] && docker -H "unix://$sock" info >/dev/null 2>&1; then
    echo "DOCKER_HOST=unix://$sock"
    return 0
  fi
  command -v dockerd >/dev/null || { echo "Error: dockerd not found; apt-get install docker.io" >&2; exit 1; }
  # setsid: the daemon (and the containerd it starts) keep running when the caller's shell ends.
  setsid dockerd --data-root "$data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
    --host "unix://$sock" --bridge none --iptables=false --ip6tables=false --ip-masq=false \
    >"$dir/dockerd.log" 2>&1 </dev/null &
  local i
  for i in $(seq 1 120); do
    if docker -H "unix://$sock" info >/dev/null 2>&1; then
      echo "DOCKER_HOST=unix://$sock"
      return 0
    fi
    sleep 0.5
  done
  echo "Error: dockerd did not start within 60s: $(tail -n 1 "$dir/dockerd.log")" >&2
  _stop "$dir" || true
  exit 1
}

_stop() {
  local dir=$1 sock pid i
  sock=$(_sock "$dir")
  [ -f "$dir/dockerd.pid" ] || return 0
  pid=$(cat "$dir/dockerd.pid")
  if [ -S "$sock" ]; then
    local ids; ids=$(docker -H "unix://$sock" ps -aq 2>/dev/null || true)
    [ -z "$ids" ] || docker -H "unix://$sock" rm -f $ids >/dev/null 2>&1 || true
  fi
  if kill -0 "$pid" 2>/dev/null && grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid"
    for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" || true
  fi
  rm -f "$dir/dockerd.pid"
  # A daemon that ends leaves its network-namespace file (and the data root it bind-mounts onto
  # itself) mounted; unmount whatever is still mounted below its folders, deepest first, so that
  # the folders can be removed.
  local data="" mnt
  [ -f "$dir/data-root" ] && data=$(cat "$dir/data-root")
  for mnt in $(awk '{print $2}' /proc/self/mounts | sort -r); do
    case "$mnt" in
      "$dir"/* | "$dir") umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true ;;
    esac
    if [ -n "$data" ]; then
      case "$mnt" in
        "$data"/* | "$data") umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true ;;
      esac
    fi
  done
}

# The machine's Debian mirror: the first URIs/deb line of apt's sources that serves bookworm.
_mirror() {
  local uri
  uri=$(grep -rhs -A3 '^Types: deb$' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^URIs:/ {print $2}' | grep -v security | head -n 1 || true)
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

_base_image() {
  local name=$1 tarball=$2
  if docker image inspect "$name" >/dev/null 2>&1; then
    return 0
  fi
  if [ -s "$tarball" ]; then
    docker import - "$name" <"$tarball" >/dev/null
    return 0
  fi
  command -v debootstrap >/dev/null || { echo "Error: debootstrap not found; apt-get install debootstrap" >&2; exit 1; }
  local root status=0
  root=$(mktemp -d "${TMPDIR:-/tmp}/dai-mlflow-rootfs.XXXXXX")
  if debootstrap --variant=minbase bookworm "$root/fs" "$(_mirror)" >"$root/debootstrap.log" 2>&1; then
    rm -rf "$root/fs/var/cache/apt/archives/"*.deb "$root/fs/var/lib/apt/lists/"*
    mkdir -p "$(dirname "$tarball")"
    tar -C "$root/fs" -c . >"$tarball.part" && mv "$tarball.part" "$tarball" \
      && docker import - "$name" <"$tarball" >/dev/null || status=1
  else
    echo "Error: debootstrap failed: $(tail -n 1 "$root/debootstrap.log")" >&2
    status=1
  fi
  rm -rf "$root"
  return "$status"
}

_main() {
  [ $# -ge 2 ] || _usage
  case "$1" in
    start) _start "$2" "${3:-}" ;;
    stop) _stop "$2" ;;
    base-image) [ $# -eq 3 ] || _usage; _base_image "$2" "$3" ;;
    *) _usage ;;
  esac
}

_main "$@"
