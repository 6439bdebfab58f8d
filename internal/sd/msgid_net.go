package sd

// g8-netup's events; G_IFACE names the link, G_CONTROLLER the controller URL.
var (
	NetConfigApplied = register("6849fc20e75f43c9aefb8c4992f2d2f4", "net.config-applied",
		"g8-netup applied net.toml to the links",
		"Links were brought up and static addresses, gateways and MTUs set as /etc/g8os/net.toml says. Interfaces with method none were only brought up.")
	NetLinkSkipped = register("09c5da18240849608fdfd76968ce0082", "net.link-skipped",
		"g8-netup left an interface alone",
		"An interface listed in net.toml is missing, vanished, or is not in --interfaces. The search goes on with the others; if the link appears later it is used in the next round.")
	NetProbeFailed = register("f113e7ad19874666b5270c5e5096d8f0", "net.probe-failed",
		"No controller answered the health check",
		"GET /v1/health did not answer 200 over TLS verified against the trust anchor. Why, per controller: @G_ERROR@ (refused, timeout, a certificate not signed by the trust anchor, or a malformed answer). Check the controller, the route to it, and /etc/g8os/ac-ca.pem.")
	NetDHCPLease = register("b7942a99e53040cd8662070d856d337f", "net.dhcp-lease",
		"g8-netup got a DHCP lease",
		"A DHCP server gave the interface in @G_IFACE@ the address in @G_ADDRESS@; the controllers are probed through it next.")
	NetDHCPFailed = register("910cb7660ac44ef7a1bc57db38bbdefa", "net.dhcp-failed",
		"DHCP on an interface gave no usable lease",
		"No server answered within the round's DHCP window (1/8 of dhcp.timeout in round 1, doubling up to all of it from round 4), or its answer was malformed (@G_ERROR@). The interface is returned to what net.toml says for it and the search moves on.")
	NetFallbackConflict = register("d0580f4ba87545b49661c13a0f419d93", "net.fallback-conflict",
		"A fallback address is taken by another host",
		"The ARP probe (RFC 5227) for @G_ADDRESS@ was answered by the host with MAC @G_PEER@. g8-netup never assigns that address and picks another one.")
	NetFallbackAssigned = register("52ede0598fe14de2b7f7b5bd69350b48", "net.fallback-assigned",
		"g8-netup claimed a fallback address",
		"No host answered the ARP probes for @G_ADDRESS@, so it was assigned to @G_IFACE@ and announced; the fallback controller is probed through it next.")
	NetControllerFound = register("fa186dc85778470bab0ad217cb4f4c34", "net.controller-found",
		"g8-netup reached a controller",
		"The controller in @G_CONTROLLER@ answered its health check through @G_IFACE@ (@G_METHOD@: static, dhcp or fallback). /run/g8os/net.json records the decision and the later phases start.")
	NetRoundFailed = register("c0cd773c5cd441f2b0ffbca1aebfb2b7", "net.round-failed",
		"A search round found no controller",
		"Every step of the round was tried (net.toml as written, DHCP per interface, the fallback subnet per interface) and no controller answered. The next round starts in @G_WAIT@. Tried: @G_TRIED@.")
	NetLeaseRenewed = register("c519f0b2c3f9467982c2fb894d0366f5", "net.lease-renewed",
		"g8-netup renewed its DHCP lease",
		"The DHCP server extended the lease on @G_IFACE@ until @G_UNTIL@.")
	NetLeaseLost = register("e31f2a37ed7d41c1ade9cce7cb64c1e4", "net.lease-lost",
		"g8-netup lost its DHCP lease",
		"The lease on @G_IFACE@ expired without a renewal, or the server refused it. The address is removed and the search runs again.")
	NetAddressDefended = register("ee1f3163ce984014a04b3861d7a9313a", "net.address-defended",
		"g8-netup defended its fallback address",
		"Another host (@G_PEER@) used the node's fallback address; g8-netup announced it once (RFC 5227 2.4 b). A second conflict within the defend interval makes it retreat.")
	NetAddressRetreat = register("7d69b07a89c244c2bf9c3fc6611bbcc8", "net.address-retreat",
		"g8-netup gave up its fallback address",
		"Another host kept using the node's fallback address; g8-netup removed it and searches again with a new one.")
	NetControllerLost = register("5115fa16e9d3408287c81cbb33a012b7", "net.controller-lost",
		"The controller stopped answering",
		"The periodic health check of @G_CONTROLLER@ failed probe.lost_after times in a row. g8-netup keeps the address in use (its lease renewed, the node still reachable on its LAN) and searches the other links, until the controller answers again through it or another configuration reaches a controller and replaces it.")
	NetChanged = register("fb13eb20ee9e4de28ed90ebce8ed1378", "net.changed",
		"g8-netup's network decision changed",
		"net.json was rewritten: a renewed lease, a controller check that failed or recovered, or a new search result.")
	NetControllerSwitched = register("acc98c6596004bdd8012cbb4c7b8272b", "net.controller-switched",
		"g8-netup switched to another controller on the same network",
		"The health check of @G_PREVIOUS@ failed; another controller net.toml lists (@G_CONTROLLER@) answered over the network already in use, so net.json names it first without a new search. g8-unlock and g8-acsession fail over along net.json's controller list by themselves.")
	NetReloaded = register("72ca263cd33543d394d883c4c90ed3a3", "net.reloaded",
		"g8-netup applied an edited net.toml",
		"After SIGHUP (systemctl reload g8-netup) the new net.toml is in effect; changed: @G_CHANGES@. When the way the controller is reached still holds it is kept and only the changed interfaces are re-applied; otherwise (@G_REASON@) the search for a controller runs again with the new file.")
	NetConfigRejected = register("10cc72bceb5b4c309b6ac06b2cd0017d", "net.config-rejected",
		"g8-netup refused an edited net.toml",
		"On reload @G_CONFIG@ (or its trust anchor) did not load: @G_ERROR@. Nothing changed; the node keeps its network and controller.")
)
