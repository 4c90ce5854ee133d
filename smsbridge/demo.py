"""The embedded demo configuration: `smsbridge run` with no config file works at once against
the local sandbox (`smsbridge sandbox`, a Flowroute look-alike on port 8090), with the ledger
in the local PostgreSQL (`./dev setup` creates its `smsbridge` database) and the console on
127.0.0.1:8081."""

DEMO_CONFIG = """
[broker]
url = "amqp://guest:guest@127.0.0.1:5672/"

[ledger]
url = "postgresql://postgres@127.0.0.1:5432/smsbridge"

[gateway]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
dlr_secret = "demo-only-dlr-secret-change-me"

[console]
listen = "127.0.0.1:8081"
token = "demo-console-token-change-me"

[media]
dir = "var/media"
allow_networks = ["127.0.0.1/32"]
allow_any_port = true

[[providers]]
name = "sandbox"
type = "flowroute"
api_url = "http://127.0.0.1:8090/v2.2"
access_key = "sandbox-access"
secret_key = "sandbox-secret"
sms_per_second = 5
mms_per_second = 1

[[policies]]
name = "demo"
opt_out = true
help_reply = "Demo Co.: reply STOP to unsubscribe. Support: +1 202 555 0100."

[[numbers]]
name = "Demo line"
number = "+12025550100"
provider = "sandbox"
url_prefix = "flowrouteinbound"
source = ["100"]
destination = "100"
policy = "demo"
"""
