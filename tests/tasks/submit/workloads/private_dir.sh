#!/bin/bash
# Rank wrapper for the shared-storage preflight drill: on node PRIVATE_NODE the directory DIR is
# replaced by an empty tmpfs in a private mount namespace, as if that node mounted another
# filesystem at the path. Usage: private_dir.sh PRIVATE_NODE DIR COMMAND...
private_node=$1 dir=$2
shift 2
if [ "${SLURMD_NODENAME:-}" = "$private_node" ]; then
  exec unshare --mount --propagation private bash -c 'mount -t tmpfs tmpfs "$0" && exec "$@"' "$dir" "$@"
fi
exec "$@"
