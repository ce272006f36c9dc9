package rs

// SetBatchEndpoint points a kit's activity batches elsewhere (a test
// endpoint standing for the provider's POST /activity/batch).
func SetBatchEndpoint(k *Kit, url string) { k.batchEndpoint = url }
