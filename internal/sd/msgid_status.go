package sd

// Events of g8-status, the operator's view of the chain.
var (
	ChainPhaseFailed = register("0c7a87265a11422d9a61b710d8658b99", "chain.phase-failed",
		"A g8 boot phase's unit failed",
		"The unit in @G_UNIT@ entered the failed state: it stopped with an error that Restart= does not retry (for example an invalid configuration or a node the controller denied), or it failed too often in a row. It ended with result @G_RESULT@, status @G_STATUS@. The same line is on the console and at the login prompt. Read the unit's journal (journalctl -b -u UNIT), fix the cause, then systemctl restart UNIT.")
)
