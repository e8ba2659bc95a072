// Package bench runs fleets of simulated devices over real sockets and
// measures upgrade campaigns: the engine of `otafleet sim` and `otafleet
// bench`.
//
// A [Fleet] derives every device from its number alone: ID (prefix +
// number), protocol (MQTT, LwM2M FOTA or PCP, in turn for a mix), radio cell
// and coverage (LwM2M devices; RSRP/SINR values inside spec 1's ranges),
// whether and how it fails, and its MQTT secret and DTLS PSK (from a seed).
// So `otafleet sim --register`, a later `otafleet sim`, and several sim
// processes that share a fleet by ranges all agree.
//
// [StartSim] runs a fleet's devices (bench/sim/mqttsim and
// bench/sim/lwm2msim, each with its own socket, as real devices have)
// against a server. [Run] is `otafleet bench`: it starts a server and
// simulator processes, registers the fleet, runs one task per protocol and
// builds a [Report] from the API, the server's /metrics and
// /debug/pprof/heap, /proc and the children's rusage, and the journal
// counted in the store after the run. Inside, one run's state is a
// benchRun, whose execute method runs its phases; Run sets it up, calls
// execute and finishes the report.
package bench
