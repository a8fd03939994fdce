#!/usr/bin/env bash
# Rebuild the shipped zoo (pretrained/) from the project's own recipes: each weighter is
# meta-trained by `weightzoo train` with a CE baseline on identical data (seed 0), then its
# artifact directory and metrics.json are copied into pretrained/NAME.  ~25 min on 2 CPU cores.
# ONLY="name ..." rebuilds only those entries.
set -euo pipefail
cd "$(dirname "$0")/.."
WZ=${WZ:-.venv/bin/weightzoo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # small models: one thread per process is fastest
RUNS=${RUNS:-runs/zoo}
declare -A ZOO=(
  [mwnet-fmnist-sym40]=fmnist-sym40-mwnet
  [mwnet-fmnist-longtail]=fmnist-longtail-mwnet
  [cmwnet-fmnist-asym40]=fmnist-asym40-cmwnet
  [cmwnet-fmnist-longtail-noise]=fmnist-longtail-noise-cmwnet
  [cmwnet-fmnist-mixed]=fmnist-mixed-cmwnet
  [cmwnet-sl-fmnist-sym40]=fmnist-sym40-cmwnet-sl
  [arl-gce-fmnist-sym40]=fmnist-sym40-arl-gce
  [cmwnet-fixmatch4-fmnist]=fmnist-fixmatch4-cmwnet
  [cmwnet-sce-fmnist-longtail-noise]=fmnist-longtail-noise-cmwnet-sce
  [cmwnet-fmnist-partial30]=fmnist-partial30-cmwnet
  [cmwnet-fmnist-longtail]=fmnist-longtail-cmwnet
  [cmwnet-fmnist-multi]=fmnist-multi-cmwnet
  [cmwnet-sl-fmnist-multi]=fmnist-multi-cmwnet-sl
  [arl-gce-fmnist-multi]=fmnist-multi-arl-gce
  [cmwnet-cb-fmnist-longtail]=fmnist-longtail-cmwnet-cb
)
# the baseline each entry is trained beside (recorded in its card): CE, except where another
# is the fair reference (FixMatch's threshold mask for a FixMatch mask, the robust loss a
# weighter weights, class-balanced CE for a long-tail weighter)
declare -A BASELINE=([cmwnet-fixmatch4-fmnist]=fixmatch [cmwnet-sce-fmnist-longtail-noise]=sce
                     [cmwnet-fmnist-longtail]=class-balanced [cmwnet-cb-fmnist-longtail]=class-balanced)
for name in ${ONLY:-${!ZOO[@]}}; do
  recipe=${ZOO[$name]}
  if [ ! -f "$RUNS/$name/metrics.json" ]; then
    "$WZ" train "$recipe" --out "$RUNS/$name" --baseline "${BASELINE[$name]:-ce}" --seed 0 --no-progress --resume \
      --set "name=\"$name\""
  fi
  rm -rf "pretrained/$name.tmp" && cp -r "$RUNS/$name/weighter" "pretrained/$name.tmp"
  cp "$RUNS/$name/metrics.json" "pretrained/$name.tmp/metrics.json"
  rm -rf "pretrained/$name" && mv "pretrained/$name.tmp" "pretrained/$name"
  echo "built pretrained/$name"
done
