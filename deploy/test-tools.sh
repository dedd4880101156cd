#!/usr/bin/env bash
# Install the tools the test suite runs besides Python: Node.js, Java, Go, PHP
# (the partner guide's signature-verification programs run in each), jq and
# curl (its walk-through), and Chromium with a Devanagari font (the tracking
# page's browser tests and screenshots, in English and Hindi, driven by
# Playwright), and axe-core from npm (the portal's accessibility checks).
# Safe to run again: it installs only what is missing.
set -euo pipefail

missing=()
for pair in node:nodejs java:default-jre-headless go:golang-go php:php-cli jq:jq curl:curl chromium:chromium; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
fc-list : family 2>/dev/null | grep -i "lohit devanagari" >/dev/null || missing+=(fonts-lohit-deva)
if ((${#missing[@]})); then
  printf 'test-tools: installing %s\n' "${missing[*]}" >&2
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# axe-core, which the portal's browser tests inject into each page to check
# its accessibility: from the npm registry, pinned by tests/browser/package-lock.json.
browser_tests="$(dirname "$0")/../tests/browser"
if [[ ! -f "$browser_tests/node_modules/axe-core/axe.min.js" ]]; then
  printf 'test-tools: installing axe-core\n' >&2
  npm ci --prefix "$browser_tests" --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null
fi
