package main

// config.changeVersion, kept as vCenter keeps it. vSphere documents the property as "a unique
// identifier for a given version of the configuration. Each change to the configuration
// updates this value", and clients (the virtdrivers listing among them) re-read a VM's devices
// and extraConfig only when it moved. vcsim 0.24 never sets it.
//
// The launcher cannot hook every place vcsim edits a VM's config, so it versions by content:
// after any SOAP call on a VM, on one of its snapshots, or that made VMs (create, clone,
// register), it compares a digest of each such VM's config (everything but changeVersion and
// modified) with the digest it versioned last, and stamps a new changeVersion (a UTC time with
// microseconds, strictly increasing, the form vCenter uses) when they differ. The stamp is in
// place before the call's answer leaves, so a client never reads a changed config under an old
// version. What it does not see: config edits by calls on other objects (vCenter would bump
// there too); no such call changes a VM's config in vcsim 0.24 as far as virtdrivers uses it.

import (
	"crypto/sha256"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

type configVersions struct {
	mu     sync.Mutex
	digest map[string][sha256.Size]byte // VM id -> digest of the config its changeVersion names
	fresh  map[string]bool              // VMs registered since the last stamp
	last   time.Time                    // the last version handed out
}

var versions = &configVersions{digest: map[string][sha256.Size]byte{}, fresh: map[string]bool{}}

func (c *configVersions) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VdvcsimHandler", Value: "config-versions"}
}

func (c *configVersions) PutObject(obj mo.Reference) {
	if vm, ok := obj.(*simulator.VirtualMachine); ok {
		c.mu.Lock()
		c.fresh[vm.Self.Value] = true
		c.mu.Unlock()
	}
}

func (c *configVersions) UpdateObject(mo.Reference, []types.PropertyChange) {}

func (c *configVersions) RemoveObject(ref types.ManagedObjectReference) {
	if ref.Type == "VirtualMachine" {
		c.mu.Lock()
		delete(c.digest, ref.Value)
		delete(c.fresh, ref.Value)
		c.mu.Unlock()
	}
}

// next is a new version: now, or a microsecond after the last one when the clock has not moved.
func (c *configVersions) next() string {
	now := time.Now().UTC().Truncate(time.Microsecond)
	if !now.After(c.last) {
		now = c.last.Add(time.Microsecond)
	}
	c.last = now
	return now.Format("2006-01-02T15:04:05.000000Z")
}

// vmsAbout is the VM a call on this may reconfigure: the VM itself, or a snapshot's VM.
func vmsAbout(this string) []string {
	if strings.HasPrefix(this, "vm-") {
		return []string{this}
	}
	if strings.HasPrefix(this, "snapshot-") {
		snap, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: this}).(*simulator.VirtualMachineSnapshot)
		if ok {
			return []string{snap.Vm.Value}
		}
	}
	return nil
}

// stamp versions the given VMs and every VM registered since the last stamp.
func (c *configVersions) stamp(ids ...string) {
	c.mu.Lock()
	for id := range c.fresh {
		ids = append(ids, id)
	}
	c.fresh = map[string]bool{}
	c.mu.Unlock()
	for _, id := range ids {
		vm := vmOf(id)
		if vm == nil {
			continue
		}
		simulator.Map.WithLock(vm, func() {
			if vm.Config == nil {
				return
			}
			cfg := *vm.Config
			cfg.ChangeVersion = ""
			cfg.Modified = time.Time{}
			b, err := xml.Marshal(&cfg)
			if err != nil {
				// Unreadable: a new version every time is stale-proof.
				b = []byte(time.Now().String())
			}
			sum := sha256.Sum256(b)
			c.mu.Lock()
			defer c.mu.Unlock()
			if old, ok := c.digest[id]; ok && old == sum && vm.Config.ChangeVersion != "" {
				return
			}
			c.digest[id] = sum
			simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.changeVersion", Val: c.next()}})
		})
	}
}

// stampAll versions every VM of the inventory (at start-up, after the launcher's own edits).
func (c *configVersions) stampAll() {
	var ids []string
	for _, e := range simulator.Map.All("VirtualMachine") {
		ids = append(ids, e.Reference().Value)
	}
	c.stamp(ids...)
}

// pcReads are the calls that only read: answered straight through, never versioned (their
// answers can be large, and nothing changed).
var pcReads = map[string]bool{
	"RetrievePropertiesEx":         true,
	"ContinueRetrievePropertiesEx": true,
	"RetrieveProperties":           true,
	"WaitForUpdatesEx":             true,
	"WaitForUpdates":               true,
	"CheckForUpdates":              true,
}
