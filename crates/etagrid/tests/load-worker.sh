#!/usr/bin/env bash
# A fast stand-in for `etagrid worker --job FILE` for crates/etagrid/tests/load.rs: reports LOAD_STEPS train
# events (step 1..N, loss = step) and one eval as fast as bash prints them, then finishes.
set -u
n="${LOAD_STEPS:-50}"
echo "{\"event\":\"started\",\"device\":\"fake\",\"total_steps\":$n,\"train_examples\":1,\"eval_examples\":1,\"trainable_params\":1,\"groups\":[]}"
for ((i = 1; i <= n; i++)); do
  echo "{\"event\":\"train\",\"step\":$i,\"total_steps\":$n,\"loss\":$i,\"lr_a\":0.001,\"lr_b\":0.01}"
done
echo "{\"event\":\"eval\",\"step\":$n,\"loss\":0.5,\"accuracy\":0.75}"
echo "{\"event\":\"finished\",\"result\":{\"metric\":0.75,\"eval_loss\":0.5,\"accuracy\":0.75,\"train_loss\":$n,\"steps\":$n,\"wall_s\":0.01,\"train_samples_per_s\":100.0}}"
