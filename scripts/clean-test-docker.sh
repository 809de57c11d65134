#!/usr/bin/env bash
# Remove what an interrupted compose test (tests/cluster/test_compose.py) may have left:
# containers, networks and volumes of compose projects named cargohold-test-* and
# cargohold-tls-* and cargohold-prom-* (the mTLS and Prometheus compose tests), and
# dangling builds of the cargohold image. Touches nothing else.
set -uo pipefail
command -v docker >/dev/null && docker info >/dev/null 2>&1 || exit 0

mapfile -t containers < <(docker ps -aq --filter 'name=^cargohold-(test|tls|prom)-')
((${#containers[@]})) && docker rm -f "${containers[@]}" >/dev/null
mapfile -t networks < <(docker network ls -q --filter 'name=^cargohold-(test|tls|prom)-')
((${#networks[@]})) && docker network rm "${networks[@]}" >/dev/null
mapfile -t volumes < <(docker volume ls -q --filter 'name=^cargohold-(test|tls|prom)-')
((${#volumes[@]})) && docker volume rm "${volumes[@]}" >/dev/null
docker image prune -f --filter 'label=org.opencontainers.image.title=cargohold' >/dev/null
exit 0
