package storage

import (
	"errors"

	"github.com/dgraph-io/badger/v4"
)

// Group commit in the application. Badger batches concurrent transactions
// into one value-log write, but then syncs its memtable WAL once per
// transaction (writeToLSM → SyncWAL), so 20 concurrent Puts cost 20 msyncs
// in a row. Every write of the spool (Put, Update, Delete, SaveBlob) is
// instead an op handed to one committer goroutine, which applies all ops
// waiting at that moment to one transaction: one commit, one WAL sync and
// one value-log sync for the lot. A caller still returns only after its
// op is on flash. Being the only writer, the committer never meets a
// conflict, and each op sees the writes of the ops before it.

// maxGroupOps bounds one group transaction; Badger also caps a
// transaction's size (ErrTxnTooBig), which the fallback below handles.
const maxGroupOps = 128

type commitOp struct {
	apply func(txn *badger.Txn) error
	// after runs once the op is durable (counters, schedule bound); it
	// runs in the committer, in commit order.
	after func()
	done  chan error
}

// write runs apply in a group transaction and returns once it is durable.
func (s *Spool) write(apply func(txn *badger.Txn) error, after func()) error {
	op := &commitOp{apply: apply, after: after, done: make(chan error, 1)}
	// The read lock makes Close wait for sends in progress, so the
	// committer answers every op that got into the queue.
	s.commitMu.RLock()
	if s.commitClosed {
		s.commitMu.RUnlock()
		return errClosed
	}
	s.ops <- op
	s.commitMu.RUnlock()
	return <-op.done
}

var errClosed = errors.New("spool closed")

func (s *Spool) committer() {
	defer close(s.committerDone)
	batch := make([]*commitOp, 0, maxGroupOps)
	for {
		var first *commitOp
		select {
		case first = <-s.ops:
		case <-s.stopCommit:
			// No op can be sent any more; answer those queued.
			for {
				select {
				case op := <-s.ops:
					s.commitGroup(append(batch[:0], op))
				default:
					return
				}
			}
		}
		batch = append(batch[:0], first)
	more:
		for len(batch) < maxGroupOps {
			select {
			case op := <-s.ops:
				batch = append(batch, op)
			default:
				break more
			}
		}
		s.commitGroup(batch)
		clear(batch)
	}
}

// commitGroup commits ops in one transaction. If any op fails (not found,
// id taken, transaction too big) or the commit fails, the transaction is
// dropped and every op runs again in a transaction of its own, so one op's
// error never touches another's writes.
func (s *Spool) commitGroup(ops []*commitOp) {
	if len(ops) > 1 {
		txn := s.db.NewTransaction(true)
		ok := true
		for _, op := range ops {
			if err := op.apply(txn); err != nil {
				ok = false
				break
			}
		}
		if ok {
			err := txn.Commit()
			if err == nil {
				for _, op := range ops {
					if op.after != nil {
						op.after()
					}
					op.done <- nil
				}
				return
			}
		} else {
			txn.Discard()
		}
	}
	for _, op := range ops {
		err := s.db.Update(op.apply)
		if err == nil && op.after != nil {
			op.after()
		}
		op.done <- err
	}
}
