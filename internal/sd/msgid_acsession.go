package sd

// Events of g8-acsession, the node's mutual-TLS session with the controller.
var (
	ACSessionCertRenewed = register("4e45b35276134d3a86b68db1b2190fd3", "acsession.cert-renewed",
		"The node certificate was renewed",
		"The session asked the controller for a new node certificate before the old one expires (@G_EXPIRY@ was its end), wrote the new key and certificate into the unlocked config atomically and reconnects with them. The old certificate is refused from its first use on.")
	ACSessionCertRenewFailed = register("5a916178f0c94eeb925b840c3a88a7b1", "acsession.cert-renew-failed",
		"Renewing the node certificate failed; the session retries",
		"The session could not renew its node certificate (@G_ERROR@). The current one stays in use until @G_EXPIRY@; the session tries again at its next heartbeat. If it expires, g8-unlock renews it at its next start through the node's identity key.")
	ACSessionConnected = register("a852930e856846c2acc4f223c873c8ee", "acsession.connected",
		"The node's session with the controller is up",
		"g8-acsession completed a verified round trip with the controller in @G_CONTROLLER@ using the node certificate; heartbeats, jobs and queued events flow again.")
	ACSessionLost = register("39d44c34377540c4aaa58bae527de33c", "acsession.lost",
		"The node lost its session with the controller",
		"A request to the controller in @G_CONTROLLER@ failed (@G_ERROR@). g8-acsession reconnects with capped backoff; events are kept on disk meanwhile and sent in order afterwards. Check the network (g8-netup) and the controller.")
	ACSessionRefused = register("173abe7977334e4985180067efdcb8f9", "acsession.refused",
		"The controller refused the node's certificate",
		"The controller in @G_CONTROLLER@ answered 401/403 or rejected the TLS client certificate (@G_SERIAL@): the node was revoked or is unknown to it. g8-acsession retries slowly and never falls back to an unauthenticated channel. Re-enroll the node or undo the revocation on the controller.")
	ACSessionWaiting = register("9a9e5c738d6545a8884ac1b8b6b6e1d8", "acsession.waiting",
		"g8-acsession waits for an input",
		"The controller URL (net.json from g8-netup) or the node identity (ssl/ under the config root, from enrollment) is missing or unreadable; The file: @G_ERROR@. The session starts as soon as it is there.")
	ACSessionControllerChanged = register("0e0ffad90519483bb85a77a9e7bc50ba", "acsession.controller-changed",
		"g8-acsession moved to another controller",
		"The session moved from @G_PREVIOUS@ to @G_CONTROLLER@: the one in use stopped answering and the next one in net.json's controller list did (failover), or g8-netup's decision changed (net.json no longer lists it, or names another link).")
	ACSessionJobFinished = register("7b5a70fd01e24d73bd5dbbac501922e0", "acsession.job-finished",
		"A controller job finished on the node",
		"Job @G_JOB@ of kind @G_KIND@ ended in state @G_STATE@ (ok, failed, timeout). Its result goes to the controller: `g8-ac job show @G_JOB@`.")
	ACSessionJobRefused = register("bdfd3de21e0444279f4b84069046d9ee", "acsession.job-refused",
		"A controller job was not run",
		"Job @G_JOB@ was malformed, of an unknown kind, or a duplicate of an id already run (@G_ERROR@). The node answered with a rejected result and keeps serving.")
	ACSessionQueueFull = register("aaaba7cf218f4091a89e7f3b027a0a42", "acsession.queue-full",
		"The node's event queue is full",
		"The controller has been unreachable long enough for --queue-max events to pile up; newer events are counted and dropped (oldest are kept) and an events.dropped event reports the count once the controller is back.")
	ACSessionEventDropped = register("2fd8c9d80644423588ded6b13f7ddde2", "acsession.event-dropped",
		"An event could not be written to the node's queue",
		"g8-acsession could not write an event to its on-disk queue (@G_ERROR@), usually because the disk holding --data-dir is full. The event was counted as dropped (events_dropped in acsession.json); an events.dropped event reports the count to the controller once events can be written again. Acknowledged events still leave the queue, freeing space.")
	ACSessionHostCert = register("3e39fb2d9450485da64f67c14b029f1e", "acsession.ssh-host-cert",
		"The node's SSH host certificate was renewed",
		"g8-acsession asked the controller to sign the node's SSH host key and wrote the certificate @G_FILE@ (principals @G_PRINCIPALS@, valid until @G_VALID_BEFORE@); g8-sshd offers it from its next reload. When it fails (@G_ERROR@) the node keeps its old certificate, if any, and SSH with the plain host key keeps working.")
	ACSessionThrottled = register("9864fd1878b6442ea1ed127a63321777", "acsession.throttled",
		"The controller asked this node to slow down",
		"The controller @G_CONTROLLER@ answered 429: this node sent more requests (or events) than its per-node budget allows (g8-ac serve --node-rate, --node-burst). The session keeps its connection and sends nothing until the Retry-After of @G_WAIT@ has passed; events wait in the on-disk queue. Seen often, something on the node produces far more events or jobs than usual.")
)
