package sd

// Events every phase logs; the phase is in G_PHASE.
var (
	PhaseStarted = register("240534f1c8d943318e06c61194f408f2", "phase.started",
		"A g8 boot phase started",
		"The phase @G_PHASE@ started. Its STATUS line in `systemctl status` says what it waits for.")
	PhaseReady = register("79e5f1c3ed16464db9f05a7b22b00a09", "phase.ready",
		"A g8 boot phase is ready",
		"The phase @G_PHASE@ did its job and sent READY=1; its state file in /run/g8os says what it decided.")
	PhaseFailed = register("0c5dddb639df403386b0aa8a4a41c2d7", "phase.failed",
		"A g8 boot phase failed",
		"The phase @G_PHASE@ stopped with an error: @G_ERROR@ (it names the file, field, interface or peer at fault); systemd restarts the unit as its Restart= says.")
	PhaseStopping = register("15dddf3c1bb94913a1c9ebd47b94da27", "phase.stopping",
		"A g8 boot phase is stopping",
		"The phase @G_PHASE@ received SIGTERM and is shutting down cleanly.")
	PhaseRetry = register("00c94f868f094c5da2f21326be615a32", "phase.retry",
		"A g8 boot phase is waiting before it tries again",
		"An attempt failed: @G_ERROR@. The phase tries again in @G_WAIT@.")
	StateWritten = register("0d8fd25f5c2143149bba117b39ddc923", "state.written",
		"A g8 phase updated its state file",
		"The phase wrote its state file in /run/g8os (@G_FILE@); later phases read their inputs from it.")
)
