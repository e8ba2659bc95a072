package pgstore

// Queued returns how many appends wait for a group commit.
func Queued(s *Store) int { return s.commits.queued() }
