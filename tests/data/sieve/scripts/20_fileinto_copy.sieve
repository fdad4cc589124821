require ["fileinto", "copy"];
fileinto :copy "Archive";
if header :contains "subject" "a" { fileinto :copy "Work"; }
