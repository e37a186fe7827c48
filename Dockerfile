# mqtt-twisted in a container (docs/deployment.md), installed with the README's command:
#   docker build -t mqtt-twisted . && docker run -p 1883:1883 mqtt-twisted
# Options go after the image name and replace the listener below, e.g.
#   docker run -p 1883:1883 mqtt-twisted twistd -n mqttbroker --listen tcp:1883 --log-format json
FROM python:3.11-slim

WORKDIR /src
COPY . /src
RUN pip install .

# Not root: a user of its own, whose home is where twistd runs.
RUN useradd --system --create-home --home-dir /var/lib/mqtt-twisted mqtt
USER mqtt
WORKDIR /var/lib/mqtt-twisted

EXPOSE 1883
# twistd stops the broker cleanly on SIGTERM (docker stop): clients get DISCONNECT 0x8B.
STOPSIGNAL SIGTERM
CMD ["twistd", "-n", "mqttbroker", "--listen", "tcp:1883"]
