#!/usr/bin/env bash
# Starts (or with `stop`, stops) the services of `make run` under honcho, in the background.
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE=.local/run
UV=${UV:-$(command -v uv || echo .local/tools/bin/uv)}
PIDFILE=$STATE/services.pid
export KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}
export DATABASE_URL=${DATABASE_URL:-postgresql://synergy:synergy@127.0.0.1:5432/synergy}
export PYTHONUNBUFFERED=1

stop_services() {
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill -TERM -- "-$(cat "$PIDFILE")" 2>/dev/null || kill -TERM "$(cat "$PIDFILE")"
    for _ in $(seq 1 30); do kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$PIDFILE"
}

if [ "${1:-start}" = stop ]; then stop_services; echo "services stopped"; exit 0; fi

mkdir -p "$STATE/logs"
if [ ! -s "$STATE/demo-brand.json" ]; then
  "$UV" run synergy brands create --name "Demo Brand" --json > "$STATE/demo-brand.json"
fi
WRITE_KEY=$("$UV" run python -c "import json,sys; print(json.load(open(sys.argv[1]))['write_key'])" "$STATE/demo-brand.json")
BRAND_ID=$("$UV" run python -c "import json,sys; print(json.load(open(sys.argv[1]))['brand_id'])" "$STATE/demo-brand.json")
if [ ! -s "$STATE/webhook-signing.key" ]; then
  "$UV" run python -c "import secrets; print(secrets.token_hex(32))" > "$STATE/webhook-signing.key"
fi
export CIO_WEBHOOK_SIGNING_KEY=${CIO_WEBHOOK_SIGNING_KEY:-$(cat "$STATE/webhook-signing.key")}
export INSIGHTS_DEFAULT_BRAND_ID=${INSIGHTS_DEFAULT_BRAND_ID:-$BRAND_ID}
if [ ! -s "$STATE/marketing-token.key" ]; then
  "$UV" run python -c "import secrets; print(secrets.token_hex(32))" > "$STATE/marketing-token.key"
fi
export MARKETING_TOKEN_SECRET=${MARKETING_TOKEN_SECRET:-$(cat "$STATE/marketing-token.key")}
export ACHIEVEMENTS_DATA_DIR=${ACHIEVEMENTS_DATA_DIR:-$STATE/achievements}

stop_services
setsid nohup "$UV" run honcho -f deploy/local/Procfile -d . start > "$STATE/logs/services.log" 2>&1 &
echo $! > "$PIDFILE"

declare -A PORTS=([ingest]=8000 [insights]=8001 [marketing]=8002 [cio-sink]=8003 [achievements]=8004 [dispatcher]=8005 [analytics]=8006)
for service in $(cut -d: -f1 deploy/local/Procfile); do
  port=${PORTS[$service]:-}
  [ -n "$port" ] || continue
  for _ in $(seq 1 60); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.5
  done
  if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
    echo "  $service: http://127.0.0.1:$port  (docs: /docs, metrics: /metrics)"
  else
    echo "  $service: NOT answering on $port yet; see $STATE/logs/services.log"
  fi
done
cat <<MSG

Synergy Engine is running.
  Kafka:     $KAFKA_BOOTSTRAP_SERVERS
  Postgres:  $DATABASE_URL
  Demo brand:  id $BRAND_ID, write key $WRITE_KEY
  Customer.io webhook signing key (insights): $CIO_WEBHOOK_SIGNING_KEY
  Customer.io sink: ${CIO_SITE_ID:+sending to site $CIO_SITE_ID}${CIO_SITE_ID:-DRY RUN (set CIO_SITE_ID and CIO_API_KEY, or per-brand credentials)}
  Logs:      $STATE/logs/services.log (Kafka and Postgres: .local/run/logs/)

Try:
  curl -X POST http://127.0.0.1:8000/v1/events -H "Authorization: Bearer $WRITE_KEY" \\
    -H 'Content-Type: application/json' \\
    -d @tests/fixtures/seed_examples/000_1_product_scanned.json
Stop with: make down
MSG
