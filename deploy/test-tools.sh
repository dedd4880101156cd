#!/usr/bin/env bash
# Install the tools the test suite runs besides Python: Node.js, Java, Go, PHP
# (the partner guide's signature-verification programs run in each) and jq and
# curl (its walk-through). Safe to run again: it installs only what is missing.
set -euo pipefail

missing=()
for pair in node:nodejs java:default-jre-headless go:golang-go php:php-cli jq:jq curl:curl; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  printf 'test-tools: installing %s\n' "${missing[*]}" >&2
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
