# Discovered by twistd: makes "twistd mdtwist" and "python -m twisted mdtwist" available.
from twisted.application.service import ServiceMaker

mdtwist_service = ServiceMaker(
    "mdtwist",
    "mdtwist.tap",
    "A mail server for organisations spread over several sites.",
    "mdtwist",
)
