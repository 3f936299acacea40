#!/usr/bin/env bash
# A stand-in for `etagrid worker --job FILE` for crates/etagrid/tests/robust.rs: speaks the
# protocol without training. FAKE_DIR (from the test, through `etagrid run`'s environment) gets
# one line per start in FAKE_DIR/starts.log; FAKE_MODE says what to do:
#   ok           finish at once
#   hold         write FAKE_DIR/started-<cell>, then finish only once FAKE_DIR/release exists
#   input-error  report a failed cell and exit 4 (a bad input, as the real worker does)
set -u
job="$2"
cell="$(basename "$(dirname "$job")")"
echo "$cell" >> "$FAKE_DIR/starts.log"
echo '{"event":"started","device":"fake","total_steps":1,"train_examples":1,"eval_examples":1,"trainable_params":1,"groups":[]}'
case "${FAKE_MODE:-ok}" in
  hold)
    : > "$FAKE_DIR/started-$cell"
    # The worker's own wait (a real one trains meanwhile); the test waits on started-<cell>.
    while [ ! -e "$FAKE_DIR/release" ]; do sleep 0.05; done ;;
  input-error)
    echo '{"event":"failed","error":"read data/train.csv: changed under the run"}'
    exit 4 ;;
esac
echo '{"event":"finished","result":{"metric":0.5,"eval_loss":0.7,"accuracy":0.5,"train_loss":0.7,"steps":1,"wall_s":0.01,"train_samples_per_s":100.0}}'
