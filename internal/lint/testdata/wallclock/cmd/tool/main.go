package main

import "time"

func main() {
	_ = time.Now()
	time.Sleep(time.Second)
	<-time.After(time.Second)
}
