package lwm2m

// OnStrayClosed sets the tests' hook called when a silent conversation that
// belongs to no registration is closed. Call it before Start.
func (s *Server) OnStrayClosed(f func(peer string)) { s.onStrayClosed = f }

// Fresher is fresher, for the tests.
var Fresher = fresher
