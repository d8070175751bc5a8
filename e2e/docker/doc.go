// Package docker holds the container test of deploy/compose.yaml: it runs
// the standard hachat cluster as containers of the hachat:dev image on this
// machine's Docker engine, keeps a customer and an agent chatting, kills the
// primary chat core's container with SIGKILL and checks that the chat goes
// on with nothing acknowledged lost or shown twice. The partition test cuts
// a core's container off the cluster network under load (the backup's, then
// the primary's) and checks the roles that follow and the chats' integrity.
// The pair test kills both cores of pair 2 of the three pairs while a
// proxyless grpc-go client, driven by the compose control planes, chats on
// all of them: pairs 1 and 3 go on without a failover and new chats avoid
// pair 2.
//
// The test needs Docker and docker-compose, so it sits behind the docker
// build tag and plain `go test ./...` does not run it:
//
//	go test -tags docker -count=1 -v ./e2e/docker/
//
// Untagged, the package only checks the shape of deploy/compose.yaml.
// docs/deploy.md describes the deployment and what the test proves.
package docker
