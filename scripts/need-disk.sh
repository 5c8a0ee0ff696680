#!/usr/bin/env bash
# need-disk.sh GB PATH WHAT: stop with a clear message unless PATH's disk has GB free.
# pip's own "No space left on device" comes minutes into an install and names no size.
set -euo pipefail
need_gb=$1 path=$2 what=$3
while [ ! -e "$path" ]; do path=$(dirname "$path"); done
free_gb=$(df -Pk "$path" | awk 'NR==2 {print int($4 / 1048576)}')
if [ "$free_gb" -lt "$need_gb" ]; then
  echo "$what needs ~$need_gb GB free on the disk of $path; $free_gb GB are free. Free some space and run again." >&2
  exit 2
fi
