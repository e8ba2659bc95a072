// Package lint holds otafleet's lint rules, written as Go tests in the manner
// of pebble's internal/lint, so that `go test ./...` enforces them with no
// extra tool. The package has no non-test code.
//
// The rules:
//
//   - TestWallClock: nothing outside internal/clock and cmd/ reads the wall
//     clock or arms a real timer (time.Now, Since, Until, Sleep, After,
//     AfterFunc, NewTimer, Tick, NewTicker); no test sleeps or waits on real
//     time (time.Sleep, After, Tick) anywhere, and tests outside
//     internal/clock do not call time.Now.
//   - TestImports: the pure state machines (actors/*/*fsm) depend only on the
//     standard library, messages and google.golang.org/protobuf; messages
//     only on the standard library and protobuf; the PCP codec
//     (transport/pcp) only on the standard library and messages, whose
//     codes and sizes it uses; internal/clock only on the standard library.
//     Who may import what: the device simulators (bench/sim/...) are
//     imported only by cmd/, bench/ and tests; the transport adapters and
//     their codecs (transport/*/...) only by cmd/, bench/, transport/ and
//     tests, so that the engine (actors) and its machines import no
//     transport but the seam package transport. A rule applies to a package
//     as soon as it exists.
//   - TestPackageDocs: every package has exactly one package doc comment,
//     starting "Package <name> ", across its non-generated, non-test files.
//
// Each rule is a function over a directory tree, tested on small fixture
// trees under testdata/ so that each rule is seen to fail. Run them alone with
//
//	go test ./internal/lint
package lint
