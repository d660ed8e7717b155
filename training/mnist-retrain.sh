#!/usr/bin/env bash
# The retraining job, as the compose profile `retrain` and the Kubernetes CronJob `mnist-retrain` run it (the
# trainer image installs it as `mnist-retrain`): users' feedback -> snapshot -> new version -> canary.
#
#   mnist-retrain [extra mnist-train flags, e.g. --data-dir /data/mnist --download]
#
# 1. `mnist-train dataset export`: the feedback labels in Cassandra (CASSANDRA_*) into a new snapshot under
#    FEEDBACK_SNAPSHOT_DIR (default MODEL_BASE_PATH/feedback-snapshots).
# 2. The `stable` version, read from MODEL_CONFIG_FILE: the version the new one would replace.
# 3. `mnist-train --feedback latest --baseline STABLE`: trains, scores both versions on the snapshot's holdout
#    and the MNIST test set, exports the next version.
# 4. With RETRAIN_CANARY=1 (the default): `mnist-models canary VERSION`, past the quality gate (exit 6 when it
#    refuses; the job then fails and the version stays unserved). RETRAIN_CANARY=0 stops after step 3 (when
#    the model server's config cannot be written from here, as with a Kubernetes ConfigMap).
# Stops at the first failing step with that step's exit code. `-h`/`--help` prints the usage and runs nothing.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: mnist-retrain [mnist-train flags, e.g. --data-dir /data/mnist --download]

The retraining job: users' feedback -> snapshot -> new version -> canary.
  1. mnist-train dataset export: the feedback labels in Cassandra (CASSANDRA_*) into a new snapshot under
     FEEDBACK_SNAPSHOT_DIR (default MODEL_BASE_PATH/feedback-snapshots)
  2. the stable version, read from MODEL_CONFIG_FILE (default serving/models.config)
  3. mnist-train --feedback latest --baseline STABLE [the flags given here]
  4. RETRAIN_CANARY=1 (default): mnist-models canary VERSION, past the quality gate (exit 6: refused);
     RETRAIN_CANARY=0 stops after step 3
Stops at the first failing step with that step's exit code. See docs/training.md, "Retraining on feedback".
EOF
}
for arg in "$@"; do
    case "${arg}" in
        -h | --help)
            usage
            exit 0
            ;;
    esac
done

echo "mnist-retrain: exporting the feedback snapshot" >&2
mnist-train dataset export

stable=$(python - <<'PY'
import os
from pathlib import Path

from serving.ops import model_config
from serving.ops.config_file import ConfigFile

name = os.environ.get("MODEL_NAME") or "mnist"
config = ConfigFile(Path(os.environ.get("MODEL_CONFIG_FILE") or "serving/models.config")).read()
stable = model_config.labels(config, name).get("stable")
if stable is None:
    raise SystemExit(f"mnist-retrain: no `stable` label for {name} in the model config")
print(stable)
PY
)
echo "mnist-retrain: training against stable version ${stable}" >&2
trained=$(mnist-train --feedback latest --baseline "${stable}" "$@")
printf '%s\n' "${trained}"
version=$(printf '%s\n' "${trained}" | sed -n 's#^exported .*/\([0-9][0-9]*\)$#\1#p')
if [ -z "${version}" ]; then
    echo "mnist-retrain: mnist-train did not say which version it exported" >&2
    exit 1
fi
if [ "${RETRAIN_CANARY:-1}" = "1" ]; then
    mnist-models canary "${version}"
else
    echo "mnist-retrain: version ${version} exported; canary it with: mnist-models canary ${version}" >&2
fi
