package download

// GrantEntries returns the number of devices s remembers a grant of (its
// handle's record, its kept authorization), for the tests that no entry
// outlives its grant.
func GrantEntries(s *Server) int { return s.grants.len() }
