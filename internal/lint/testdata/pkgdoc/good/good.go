// This comment is separated from the package clause, so it is no doc.

package good
