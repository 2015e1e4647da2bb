#!/usr/bin/env bash
# Puts nine real photographs (JPEG, 1680x1050 to 2560x1920) from Debian's mate-backgrounds
# package into the folder given (default: ./photos). Idempotent. (Copied from the team's shared
# corpus so a clean clone needs nothing outside the repository.)
set -euo pipefail
dest=${1:-photos}
mkdir -p "$dest"
want=(Garden Dune Wood TwoWings Storm RainDrops Blinds LadyBird YellowFlower)
have=0
for n in "${want[@]}"; do [[ -s "$dest/$n.jpg" ]] && have=$((have + 1)); done
if (( have == ${#want[@]} )); then echo "photos already in $dest"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && apt-get download mate-backgrounds >/dev/null 2>&1 ) || {
  apt-get update >/dev/null 2>&1 && ( cd "$work" && apt-get download mate-backgrounds >/dev/null )
}
dpkg -x "$work"/mate-backgrounds_*.deb "$work/x"
for n in "${want[@]}"; do cp "$work/x/usr/share/backgrounds/mate/nature/$n.jpg" "$dest/$n.jpg"; done
echo "photos in $dest: ${want[*]}"
