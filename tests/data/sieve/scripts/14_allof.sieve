require "fileinto";
if allof (exists "from", header :contains "from" "example", size :under 100K) { fileinto "Work"; }
