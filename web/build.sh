#!/usr/bin/env bash
# Installs the pinned third-party packages (web/package-lock.json) and copies their built files and
# licences into voicebot/http/static/vendor/, which is committed, so the page needs no build to run.
set -euo pipefail

web=$(cd "$(dirname "$0")" && pwd)
vendor="$web/../voicebot/http/static/vendor"
modules="$web/node_modules"

(cd "$web" && npm ci --no-audit --no-fund)

rm -rf "$vendor"
mkdir -p "$vendor/marked" "$vendor/dompurify" "$vendor/highlight"

cp "$modules/marked/lib/marked.umd.js" "$modules/marked/LICENSE" "$vendor/marked/"
cp "$modules/dompurify/dist/purify.min.js" "$modules/dompurify/LICENSE" "$modules/dompurify/LICENSE-MPL" \
    "$vendor/dompurify/"
hljs="$modules/@highlightjs/cdn-assets"
cp "$hljs/highlight.min.js" "$hljs/LICENSE" "$hljs/styles/github.min.css" "$hljs/styles/github-dark.min.css" \
    "$vendor/highlight/"

for package in marked dompurify @highlightjs/cdn-assets; do
    printf '%s %s\n' "$package" "$(node -p "require('$modules/$package/package.json').version")"
done >"$vendor/VERSIONS"
echo "vendored into $vendor:"
cat "$vendor/VERSIONS"
