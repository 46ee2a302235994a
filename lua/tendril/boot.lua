-- Run once when the runtime starts, before the app: installs the yieldable
-- require and the coroutine relay.
require("tendril.loader").install()
require("tendril.coroutine").install()
return true
