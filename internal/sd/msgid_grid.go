package sd

// Events of the controller's grid manager (g8-ac grid) and of the node's
// app runner (g8-acsession's app.* jobs).
var (
	GridRepoInvalid = register("5c328fd516d042298388ee4c899f9ab4", "grid.repo-invalid",
		"The grid repository is invalid; nothing of it was applied",
		"The repository @G_REPO@ was rejected: @G_ERROR@. The controller keeps converging the nodes to the last valid repository until the checkout is fixed.")
	GridAction = register("746588ddcd664c72af9e9063497d7059", "grid.action",
		"The grid queued an app job for a node",
		"@G_ACTION@ (install, roll, start, remove) for app @G_APP@ on node @G_NODE@, as job @G_JOB@. `g8-ac grid status` shows where each app stands.")
	GridRollout = register("91cd52bbc17d4385beb4e3f5bdb7a820", "grid.rollout",
		"An app's rollout failed or was reverted",
		"The rollout of app @G_APP@ to spec @G_SPEC@ stopped at a failed batch; with auto_revert the app goes back to its last good spec @G_GOOD@. `g8-ac grid rollout status` says why; `resume` retries the spec.")
	AppStarted = register("b9c9b98d411e4428a4695ac6f3024242", "app.started",
		"A grid app was started on this node",
		"The app @G_APP@ runs as the transient unit g8-app-<name>.service with spec @G_SPEC@; `systemctl status` and `journalctl -u` show it.")
	AppStopped = register("d5340ae49e6f436f9215ee3248b184a1", "app.stopped",
		"A grid app was stopped on this node",
		"The app @G_APP@ was stopped (@G_REASON@: stop, remove or roll).")
	AppFailed = register("010055760426473aba23dc11a2aac26a", "app.failed",
		"A grid app job failed on this node",
		"The app @G_APP@ could not be installed, started or removed: @G_ERROR@. The controller retries with backoff.")
	AppRestored = register("7b76de72da9a4e1d90ec1be13047ff0a", "app.restored",
		"A grid app was started again after a reboot",
		"The node found app @G_APP@ installed but its unit gone (a reboot) and started it again from its persisted spec.")
)
