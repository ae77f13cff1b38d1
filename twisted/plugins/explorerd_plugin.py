from twisted.application.service import ServiceMaker

explorerd = ServiceMaker(
    "explorerd",
    "explorerd.tap",
    "Stream new Ethereum blocks and transactions to WebSocket and WAMP clients.",
    "explorerd",
)
