# twistd -ny explorerd.tac: the same service as `twistd -n explorerd`,
# configured from the WEBSOCKET_* / API_* environment variables.
from twisted.application import service

from explorerd.tap import Options, makeService

options = Options()
options.parseOptions([])
application = service.Application("explorerd")
makeService(options).setServiceParent(application)
